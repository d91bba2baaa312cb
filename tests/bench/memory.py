"""Peak RSS of the node while it ingests and processes a 200- and a 2,000-instance series.

Each size gets a fresh node (subprocess, shipped rules, torch_threads 2, a real Orthanc as its
``pacs`` destination). The series are built from the LIDC chest CT slices (512x512, ~0.5 MB
each) with new UIDs, one Frame of Reference, and positions 1 mm apart so that 2,000 instances
are one long axial CT series (the pixels repeat every 55 slices), which the rules route to
lung_seg. ``storescu`` sends it over one association; the clock stops when the job is final
(done, rejected, failed or dead). The figure is ``VmHWM`` (the kernel's peak resident set) of
the node process and any children, read before the node is stopped; its RSS when idle, after
start, is printed beside it. Temporary series and spools are deleted after each size.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.bench.common import (
    Row,
    Section,
    history_times,
    node_job,
    orthanc_and_node,
    peak_rss_mib,
    print_section,
    read_lidc_in_z_order,
    rss_mib,
    wait_for_final_jobs,
    write_series,
)
from tests.peers import storescu

QUIET_PERIOD_S = 0.5
TORCH_THREADS = 2
#: Target of issue 6: peak RSS at the large size <= RATIO_TARGET x peak RSS at the small one.
RATIO_TARGET = 1.2


@dataclass(frozen=True, slots=True)
class Measurement:
    """One size: the node's memory, and what became of the job."""

    instances: int
    idle_mib: float
    peak_mib: float
    send_s: float
    job_state: str
    job_reason: str | None
    job_s: float | None


def measure(count: int, workdir: Path, *, quiet_period_s: float) -> Measurement:
    """Send a new ``count``-instance series to a fresh node; return its peak RSS and the job."""
    files = write_series(
        workdir / "series",
        count,
        tag=f"rss-{count}",
        sources=read_lidc_in_z_order(),
        new_study=True,
        one_frame_of_reference=True,
        restack=True,
    )
    try:
        with orthanc_and_node(
            workdir, quiet_period_s=quiet_period_s, torch_threads=TORCH_THREADS
        ) as (_, node):
            time.sleep(1.0)  # let start-up settle before reading the idle figure
            idle = rss_mib(node.process.pid)
            started = time.perf_counter()
            sent = storescu(node.dicom_port, files)
            send_s = time.perf_counter() - started
            if sent.returncode != 0:
                raise RuntimeError(f"storescu failed: {sent.stderr[-500:]}")
            shutil.rmtree(workdir / "series")  # the node has its own copy now
            (job,) = wait_for_final_jobs(node, 1, timeout_s=3600, interval_s=0.5)
            peak = peak_rss_mib(node.process.pid)
            detail = node_job(node, int(job["id"]))
            times = history_times(detail)
            job_s = times["exporting"] - times["running"] if "exporting" in times else None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return Measurement(count, idle, peak, send_s, detail["state"], detail["reason"], job_s)


def run(
    *,
    smoke: bool = False,
    workdir: Path | None = None,
    quiet_period_s: float = QUIET_PERIOD_S,
    sizes: tuple[int, int] | None = None,
) -> Section:
    """Measure both sizes (``smoke``: 12 and 20 instances)."""
    small, large = sizes or ((12, 20) if smoke else (200, 2000))
    section = Section("Peak RSS of the node (issue 6)")
    with tempfile.TemporaryDirectory(prefix="pacs-ai-node-bench-rss-", dir=workdir) as folder:
        results = [
            measure(n, Path(folder) / str(n), quiet_period_s=quiet_period_s) for n in (small, large)
        ]
    section.details.append(
        f"Series: LIDC slices (512x512, ~0.5 MB) restacked into {small}- and {large}-instance "
        f"axial CT series, sent by storescu over one association to a fresh node each "
        f"(shipped rules, quiet_period_s = {quiet_period_s:g}, torch_threads = "
        f"{TORCH_THREADS}, destination Orthanc). Peak = VmHWM of the node process (and "
        f"children) once the job is final."
    )
    for m in results:
        job = f"job {m.job_state}"
        if m.job_s is not None:
            job += f", volume + inference + SEG written in {m.job_s:.1f} s"
        if m.job_reason:
            job += f" ({m.job_reason})"
        section.details.append(
            f"{m.instances} instances: idle {m.idle_mib:.0f} MiB, peak {m.peak_mib:.0f} MiB; "
            f"sent in {m.send_s:.1f} s; {job}"
        )
    low, high = results
    ratio = high.peak_mib / low.peak_mib
    processed = all(m.job_state == "done" for m in results)
    section.rows.append(
        Row(
            name=f"peak RSS, {high.instances} vs {low.instances} instances"
            + ("" if processed else " (not every job was processed: see above)"),
            node=f"{high.peak_mib:.0f} MiB",
            reference=f"{low.peak_mib:.0f} MiB",
            ratio=ratio,
            target=f"≤ {RATIO_TARGET}",
            met=ratio <= RATIO_TARGET,
        )
    )
    return section


def main() -> None:
    """Run this section alone and print it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="12 and 20 instances")
    parser.add_argument("--quiet-period", type=float, default=QUIET_PERIOD_S)
    parser.add_argument("--sizes", type=int, nargs=2, metavar=("SMALL", "LARGE"))
    args = parser.parse_args()
    sizes = (args.sizes[0], args.sizes[1]) if args.sizes else None
    print_section(run(smoke=args.smoke, quiet_period_s=args.quiet_period, sizes=sizes))


if __name__ == "__main__":
    main()
