"""Receive throughput of the node against dcmtk's storescp and Orthanc, measured in one run.

``make bench`` (``python -m tests.bench.ingest``) sends the same instances with dcmtk's
``storescu`` to each receiver, for ~0.5 MB CT slices and ~15 KB images, over 1 and 4 concurrent
associations. It takes the median of 3 runs, each against a fresh receiver, and prints
instances/s, MB/s and the node's ratio to each reference. The references are:

- ``storescp`` (``--fork`` for 4 associations; it does not fsync);
- Orthanc with ``SyncStorageArea`` on.

Debian's dcmtk and Orthanc get ``TCP_NODELAY=1``, without which they stall about 45 ms an instance.
The node is durable: an instance is fsynced and indexed before its success status.
``--smoke`` runs a tiny version (used by the test suite, so the harness cannot rot).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from tests.paths import shared_data_root
from tests.peers import (
    free_port,
    nodelay_env,
    port_open,
    start_node,
    start_orthanc,
    stop_process,
    wait_for,
)

LIDC = Path("fnndsc-data") / "LIDC-IDRI-0314_CT_chest_every5th_slice"
SMALL_SIDE = 86  # 86 x 86 x 2 bytes + header: about 15 KB


@dataclass(frozen=True, slots=True)
class Case:
    """One measurement: instance size, associations, instances per association."""

    name: str
    small: bool
    associations: int
    per_association: int


@dataclass(frozen=True, slots=True)
class Result:
    """Median throughput of one receiver in one case."""

    receiver: str
    instances_per_s: float
    mb_per_s: float


Receiver = Callable[[Path, int], AbstractContextManager[tuple[int, str]]]


def make_instances(out: Path, *, small: bool, count: int, tag: str) -> list[Path]:
    """``count`` CT instances with their own UIDs: LIDC slices, or 86x86 crops of them."""
    sources = sorted((shared_data_root() / LIDC).glob("*.dcm"))
    series_uid = generate_uid(entropy_srcs=["bench", tag])
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for k in range(count):
        ds = pydicom.dcmread(sources[k % len(sources)])
        if small:
            pixels = ds.pixel_array[::6, ::6][:SMALL_SIDE, :SMALL_SIDE]
            ds.Rows, ds.Columns = pixels.shape
            ds.PixelData = np.ascontiguousarray(pixels).tobytes()
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid(entropy_srcs=["bench", tag, str(k)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = out / f"{k:05d}.dcm"
        ds.save_as(path)
        files.append(path)
    return files


@contextmanager
def node_receiver(workdir: Path, associations: int) -> Iterator[tuple[int, str]]:
    """The node, with no rules (ingest only), on a fresh spool and index."""
    rules = workdir / "rules.yaml"
    workdir.mkdir(parents=True, exist_ok=True)
    rules.write_text("rules: []\n")
    node = start_node(workdir / "node", rules_file=str(rules), log_level="WARNING")
    try:
        yield node.dicom_port, node.ae_title
    finally:
        stop_process(node.process)


@contextmanager
def storescp_receiver(workdir: Path, associations: int) -> Iterator[tuple[int, str]]:
    """dcmtk's storescp, forking a process per association when there are several."""
    port = free_port()
    out = workdir / "storescp"
    out.mkdir(parents=True, exist_ok=True)
    fork = ["--fork"] if associations > 1 else []
    process = subprocess.Popen(
        ["storescp", *fork, "-aet", "STORESCP", "--output-directory", str(out), str(port)],
        env=nodelay_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: port_open(port), timeout_s=20, what="storescp")
        yield port, "STORESCP"
    finally:
        stop_process(process)


@contextmanager
def orthanc_receiver(workdir: Path, associations: int) -> Iterator[tuple[int, str]]:
    """Orthanc with its storage synced (``SyncStorageArea``)."""
    orthanc = start_orthanc(workdir / "orthanc")
    try:
        yield orthanc.dicom_port, orthanc.ae_title
    finally:
        stop_process(orthanc.process)


RECEIVERS: dict[str, Receiver] = {
    "node": node_receiver,
    "storescp": storescp_receiver,
    "orthanc": orthanc_receiver,
}


def send(port: int, called: str, batches: list[list[Path]]) -> float:
    """Send each batch over its own storescu association, all at once; return the seconds."""
    started = time.perf_counter()
    senders = [
        subprocess.Popen(
            ["storescu", "-aec", called, "127.0.0.1", str(port), *map(str, batch)],
            env=nodelay_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for batch in batches
    ]
    for sender in senders:
        _, errors = sender.communicate(timeout=1800)
        if sender.returncode != 0:
            raise RuntimeError(f"storescu failed: {errors[-500:]}")
    return time.perf_counter() - started


def measure(case: Case, runs: int, workdir: Path) -> list[Result]:
    """Every receiver in ``case``: the median of ``runs`` runs, each on a fresh receiver."""
    batches = [
        make_instances(
            workdir / "data" / case.name / f"a{a}",
            small=case.small,
            count=case.per_association,
            tag=f"{case.name}-{a}",
        )
        for a in range(case.associations)
    ]
    total = sum(len(b) for b in batches)
    megabytes = sum(p.stat().st_size for b in batches for p in b) / 1e6
    results = []
    for name, receiver in RECEIVERS.items():
        seconds = []
        for run in range(runs):
            run_dir = workdir / "runs" / case.name / name / str(run)
            with receiver(run_dir, case.associations) as (port, called):
                seconds.append(send(port, called, batches))
            shutil.rmtree(run_dir, ignore_errors=True)
        median = statistics.median(seconds)
        results.append(Result(name, total / median, megabytes / median))
    return results


def table(rows: dict[str, list[Result]]) -> str:
    """A Markdown table: each receiver's throughput and the node's ratio to each."""
    lines = [
        "| case | node inst/s | node MB/s | storescp inst/s | orthanc inst/s | "
        "node ÷ storescp | node ÷ orthanc |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for case, results in rows.items():
        by = {r.receiver: r for r in results}
        node, scp, orthanc = by["node"], by["storescp"], by["orthanc"]
        lines.append(
            f"| {case} | {node.instances_per_s:.0f} | {node.mb_per_s:.1f} | "
            f"{scp.instances_per_s:.0f} | {orthanc.instances_per_s:.0f} | "
            f"{node.instances_per_s / scp.instances_per_s:.2f} | "
            f"{node.instances_per_s / orthanc.instances_per_s:.2f} |"
        )
    return "\n".join(lines)


def run(*, smoke: bool = False, workdir: Path | None = None) -> dict[str, list[Result]]:
    """Measure every case; ``smoke`` uses a few instances and one run."""
    cases = [
        Case("0.5 MB x 1", small=False, associations=1, per_association=5 if smoke else 200),
        Case("0.5 MB x 4", small=False, associations=4, per_association=3 if smoke else 100),
        Case("15 KB x 1", small=True, associations=1, per_association=5 if smoke else 500),
        Case("15 KB x 4", small=True, associations=4, per_association=3 if smoke else 250),
    ]
    runs = 1 if smoke else 3
    with tempfile.TemporaryDirectory(prefix="pacs-ai-node-bench-", dir=workdir) as folder:
        return {case.name: measure(case, runs, Path(folder)) for case in cases}


def main() -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a few instances, one run")
    args = parser.parse_args()
    print(
        "Receivers: node (durable, fsync + index before success), storescp (no fsync; --fork "
        "with 4 associations), Orthanc (SyncStorageArea). Sender: storescu. dcmtk and Orthanc "
        "run with TCP_NODELAY=1. Median of 3 runs.",
        flush=True,
    )
    print(table(run(smoke=args.smoke)))


if __name__ == "__main__":
    main()
