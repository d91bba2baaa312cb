"""The same job done by the MONAI Deploy App SDK and by the node: end-to-end time and peak RSS.

The series is the LIDC chest CT (55 slices), as copies with one Frame of Reference: the SDK's SEG
writer fails on the original's per-slice Frames of Reference. Both sides get the same copies
(the node a fresh set of UIDs per run, since it routes each series once) and run the same
network, weights, pre- and postprocessing with 2 torch threads (see ``appsdk_app.py``).

What is measured, on each side:

- **App SDK** (``tests/bench/appsdk_app.py``, one process per job, as an App SDK application is
  run): from spawning the process (the series already on disk) to the SEG file written by its
  writer operator; the process's exit is printed too. Peak RSS is the process's ``ru_maxrss``
  (``wait4``).
- **Node** (a subprocess, shipped rules, a real Orthanc as its destination): from starting
  ``storescu`` (the series still at the sender) to the SEG file written in the node's spool
  (the job's ``exporting`` event in its history). That includes receiving the series over DICOM,
  the completion wait (``quiet_period_s``, printed) and the job's queueing, none of which the
  App SDK does. The first job after start is cold (torch imported, model loaded); the figure
  in the table is the median of the warm ones that follow, the cold one is printed beside it.
  The App SDK's runs alternate with the node's warm ones, so both see the same load; one
  untimed App SDK run before them brings its files into the page cache.
  Peak RSS is the node's ``VmHWM`` after all its jobs.

The two SEGs are compared (Dice over frames matched by position) to show it is the same job.
The SDK's environment lives under ``.cache/bench/appsdk-venv`` (``--install`` makes it); without
it the rows say so.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from tests.bench.common import (
    Row,
    Section,
    history_times,
    node_job,
    not_measured,
    orthanc_and_node,
    peak_rss_mib,
    print_section,
    read_lidc_in_z_order,
    wait_for_final_jobs,
    write_series,
)
from tests.peers import REPO_ROOT, storescu

APPSDK_VENV = REPO_ROOT / ".cache" / "bench" / "appsdk-venv"
APPSDK_PYTHON = APPSDK_VENV / "bin" / "python"
APPSDK_CONSTRAINTS = Path(__file__).with_name("appsdk-constraints.txt")
APPSDK_APP = Path(__file__).with_name("appsdk_app.py")
#: What ``--install`` asks pip for (every version pinned by the constraints file).
APPSDK_REQUIREMENTS = (
    "monai-deploy-app-sdk==4.0.0",
    "torch==2.13.0",
    "monai",
    "highdicom",
    "pydicom",
    "scipy",  # the node's lung_seg pre/postprocessing, which appsdk_app.py imports
)
QUIET_PERIOD_S = 0.5
TORCH_THREADS = 2
#: Targets of issue 6: the node's end-to-end time and peak RSS as fractions of the App SDK's.
TIME_TARGET, RSS_TARGET = 0.6, 0.5


def appsdk_missing() -> str | None:
    """Why the App SDK's environment cannot run here, or None."""
    if not APPSDK_PYTHON.is_file():
        return f"no App SDK environment at {APPSDK_VENV} (python -m tests.bench.appsdk --install)"
    return None


def install() -> None:
    """Make the App SDK's environment (its own venv; the project's is not touched)."""
    subprocess.run([sys.executable, "-m", "venv", str(APPSDK_VENV)], check=True)
    subprocess.run(
        [
            str(APPSDK_PYTHON),
            "-m",
            "pip",
            "install",
            "-q",
            "-c",
            str(APPSDK_CONSTRAINTS),
            *APPSDK_REQUIREMENTS,
        ],
        check=True,
    )


@dataclass(frozen=True, slots=True)
class AppRun:
    """One App SDK process: seconds to the SEG written and to exit, peak RSS, its timings."""

    seg_written_s: float
    exit_s: float
    peak_mib: float
    timings: dict[str, Any]
    started: float


def run_app(input_dir: Path, output_dir: Path, log: Path) -> AppRun:
    """Run the App SDK application once on ``input_dir``; measure it."""
    env = {**os.environ, "HOLOSCAN_LOG_LEVEL": "WARN"}
    with log.open("wb") as out:
        started = time.time()
        process = subprocess.Popen(
            [
                str(APPSDK_PYTHON),
                str(APPSDK_APP),
                "--input",
                str(input_dir),
                "--output",
                str(output_dir),
                "--threads",
                str(TORCH_THREADS),
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        _, status, usage = os.wait4(process.pid, 0)
        exited = time.time()
    process.returncode = os.waitstatus_to_exitcode(status)
    text = log.read_text(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"the App SDK app failed ({process.returncode}):\n{text[-3000:]}")
    timings = json.loads(next(line for line in text.splitlines() if line.startswith("{")))
    written = timings["operators"]["seg_writer"][1]
    return AppRun(written - started, exited - started, usage.ru_maxrss / 1024, timings, started)


def seg_by_position(path: Path) -> dict[float, np.ndarray]:
    """A binary SEG's frames keyed by the z of their plane position."""
    seg = pydicom.dcmread(path)
    frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    positions = [
        round(float(item.PlanePositionSequence[0].ImagePositionPatient[2]), 2)
        for item in seg.PerFrameFunctionalGroupsSequence
    ]
    return dict(zip(positions, frames, strict=True))


def dice(a: Path, b: Path) -> float:
    """Dice of two SEGs' masks over the frames they share by position."""
    first, second = seg_by_position(a), seg_by_position(b)
    shared = sorted(set(first) & set(second))
    x = np.stack([first[z] for z in shared]) > 0
    y = np.stack([second[z] for z in shared]) > 0
    total = int(x.sum() + y.sum())
    return 1.0 if total == 0 else 2 * int((x & y).sum()) / total


def run(
    *, smoke: bool = False, workdir: Path | None = None, quiet_period_s: float = QUIET_PERIOD_S
) -> Section:
    """Run the App SDK and the node on the same series; ``smoke``: 12 slices, one run each."""
    section = Section("Against the MONAI Deploy App SDK (issue 6)")
    missing = appsdk_missing()
    if missing is not None:
        section.rows += [
            not_measured("App SDK: end to end", missing, f"≤ {TIME_TARGET}"),
            not_measured("App SDK: peak RSS", missing, f"≤ {RSS_TARGET}"),
        ]
        return section
    runs = 1 if smoke else 5
    sources = read_lidc_in_z_order()
    if smoke:
        sources = sources[20:32]
    count = len(sources)
    with tempfile.TemporaryDirectory(prefix="pacs-ai-node-bench-appsdk-", dir=workdir) as folder:
        root = Path(folder)

        def copies(tag: str) -> list[Path]:
            return write_series(
                root / tag, count, tag=f"appsdk-{tag}", sources=sources, one_frame_of_reference=True
            )

        app_input = root / "app-input"
        copies("app-input")
        if not smoke:  # not timed: brings the SDK's files into the page cache
            run_app(app_input, root / "app-output-warm-up", root / "app-warm-up.log")
        app_runs: list[AppRun] = []
        node_e2e: list[float] = []
        node_job_s: list[float] = []
        peers = orthanc_and_node(root, quiet_period_s=quiet_period_s, torch_threads=TORCH_THREADS)
        with peers as (_, node):
            # The node's cold run, then App SDK and warm node runs in turn (same load for both).
            for k in range(runs + 1):
                if k > 0:
                    output = root / f"app-output{k}"
                    app_runs.append(run_app(app_input, output, root / f"app{k}.log"))
                files = copies(f"node{k}")
                started = time.time()
                sent = storescu(node.dicom_port, files)
                if sent.returncode != 0:
                    raise RuntimeError(f"storescu failed: {sent.stderr[-500:]}")
                jobs = wait_for_final_jobs(node, k + 1, timeout_s=600)
                job = node_job(node, int(jobs[-1]["id"]))
                if job["state"] != "done":
                    raise RuntimeError(f"the node's job ended {job['state']}: {job['reason']}")
                t = history_times(job)
                node_e2e.append(t["exporting"] - started)
                node_job_s.append(t["exporting"] - t["running"])
            node_peak = peak_rss_mib(node.process.pid)
            node_seg = node.data_dir / "spool" / job["results"][0]
            app_seg = next((root / "app-output1").glob("*.dcm"))
            agreement = dice(node_seg, app_seg)

    app_e2e = statistics.median(r.seg_written_s for r in app_runs)
    app_peak = statistics.median(r.peak_mib for r in app_runs)
    warm = statistics.median(node_e2e[1:])
    section.details += _details(app_runs, node_e2e, node_job_s, count, quiet_period_s, runs)
    section.details.append(f"Same job: Dice of the node's and the App SDK's SEG = {agreement:.4f}")
    section.rows += [
        Row(
            name=f"App SDK: end to end, series -> SEG written, {count} slices",
            node=f"{warm:.2f} s (cold {node_e2e[0]:.2f} s)",
            reference=f"{app_e2e:.2f} s",
            ratio=warm / app_e2e,
            target=f"≤ {TIME_TARGET}",
            met=warm / app_e2e <= TIME_TARGET,
        ),
        Row(
            name=f"App SDK: peak RSS, {count} slices",
            node=f"{node_peak:.0f} MiB",
            reference=f"{app_peak:.0f} MiB",
            ratio=node_peak / app_peak,
            target=f"≤ {RSS_TARGET}",
            met=node_peak / app_peak <= RSS_TARGET,
        ),
    ]
    return section


def _details(
    app_runs: list[AppRun],
    node_e2e: list[float],
    node_job_s: list[float],
    count: int,
    quiet_period_s: float,
    runs: int,
) -> list[str]:
    """How each side's time splits."""
    lines = [
        f"Series: LIDC chest CT, {count} slices, copies with one Frame of Reference; torch "
        f"threads {TORCH_THREADS} on both sides; median of {runs} run(s).",
        "App SDK: process spawn -> SEG written by its writer (series already on disk); "
        "peak RSS = ru_maxrss of the process.",
    ]
    for k, r in enumerate(app_runs, 1):
        ops = r.timings["operators"]
        parts = ", ".join(
            f"{name} {end - start:.2f} s"
            for name, (start, end) in ops.items()
            if name != "model_load"
        )
        lines.append(
            f"  run {k}: SEG written {r.seg_written_s:.2f} s, exit {r.exit_s:.2f} s, peak "
            f"{r.peak_mib:.0f} MiB; interpreter start + imports "
            f"{r.timings['imported'] - r.started:.2f} s, graph set-up "
            f"{ops['loader'][0] - r.timings['imported']:.2f} s, {parts}"
        )
    lines.append(
        f"Node: storescu start -> SEG written in the spool (job 'exporting'), including DICOM "
        f"receive, quiet_period_s = {quiet_period_s:g} and queueing; peak RSS = VmHWM after "
        f"all jobs (cold + warm)."
    )
    for k, (e2e, job) in enumerate(zip(node_e2e, node_job_s, strict=True)):
        kind = "cold" if k == 0 else "warm"
        lines.append(
            f"  run {k} ({kind}): {e2e:.2f} s, of which the job (volume + inference + SEG "
            f"written) {job:.2f} s"
        )
    return lines


def main() -> None:
    """Run this section alone and print it (``--install`` makes the App SDK's environment)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="12 slices, one run")
    parser.add_argument("--install", action="store_true", help="make the App SDK's venv, then stop")
    parser.add_argument("--quiet-period", type=float, default=QUIET_PERIOD_S)
    args = parser.parse_args()
    if args.install:
        install()
        return
    print_section(run(smoke=args.smoke, quiet_period_s=args.quiet_period))


if __name__ == "__main__":
    main()
