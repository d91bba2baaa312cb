"""STOW-RS throughput: the node's ``POST /dicomweb/studies`` against Orthanc's DICOMweb STOW.

The contract (PS3.18 10.5): a ``multipart/related; type="application/dicom"`` body, one part per
instance, answered with the Store Instances Response as ``application/dicom+json``; 200 when every
instance was stored. Each client here is a thread with one keep-alive HTTP connection that posts
its requests one after another; the bodies are built before the clock starts. The same client
code posts to both receivers, so the Python client's own cost is on both sides.

- the node: ingest only (no rules), durable (each instance fsynced and indexed before the
  response), on its HTTP port;
- Orthanc 1.10 with its DICOMweb plugin and ``SyncStorageArea`` on, at ``/dicom-web/studies``.

Each figure is the median of 3 runs, each against a fresh receiver. If the node answers 404
(no STOW-RS route yet) the rows say "not measured yet".
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.bench.common import Row, Section, node_http_port, not_measured, print_section
from tests.bench.ingest import make_instances
from tests.peers import start_node, start_orthanc, stop_process

BOUNDARY = "pacs-ai-node-bench-boundary"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
UNAVAILABLE = "STOW-RS server not available"


@dataclass(frozen=True, slots=True)
class Case:
    """Instance size, concurrent clients, requests per client, instances per request."""

    name: str
    small: bool
    clients: int
    requests: int
    per_request: int


def body(paths: list[Path]) -> bytes:
    """A multipart/related body with one ``application/dicom`` part per file."""
    head = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    parts = [head + p.read_bytes() + b"\r\n" for p in paths]
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def post(connection: http.client.HTTPConnection, path: str, payload: bytes) -> tuple[int, bytes]:
    """POST one STOW-RS request; return the status and the response body."""
    connection.request(
        "POST",
        path,
        body=payload,
        headers={"Content-Type": CONTENT_TYPE, "Accept": "application/dicom+json"},
    )
    response = connection.getresponse()
    return response.status, response.read()


def endpoint_available(port: int, path: str) -> bool:
    """Whether something serves STOW-RS at ``path`` (an empty multipart body: anything but 404
    or 405 means the route exists)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        status, _ = post(connection, path, f"--{BOUNDARY}--\r\n".encode())
    finally:
        connection.close()
    return status not in (404, 405)


def send(port: int, path: str, bodies: list[list[bytes]]) -> float:
    """Each client posts its bodies over its own connection, all clients at once; seconds."""
    errors: list[str] = []
    start = threading.Barrier(len(bodies) + 1)

    def client(requests: list[bytes]) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        try:
            start.wait()
            for payload in requests:
                status, answer = post(connection, path, payload)
                if status != 200:
                    errors.append(f"{status}: {answer[:300]!r}")
                    return
                json.loads(answer)  # the Store Instances Response
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(b,)) for b in bodies]
    for thread in threads:
        thread.start()
    start.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"STOW-RS request refused: {errors[0]}")
    return seconds


@contextmanager
def node_stow(workdir: Path) -> Iterator[tuple[int, str]]:
    """The node, ingest only; yields its HTTP port and STOW path."""
    workdir.mkdir(parents=True, exist_ok=True)
    rules = workdir / "rules.yaml"
    rules.write_text("rules: []\n")
    node = start_node(workdir / "node", rules_file=str(rules), log_level="WARNING")
    try:
        yield node_http_port(node), "/dicomweb/studies"
    finally:
        stop_process(node.process)


@contextmanager
def orthanc_stow(workdir: Path) -> Iterator[tuple[int, str]]:
    """Orthanc with DICOMweb and SyncStorageArea; yields its HTTP port and STOW path."""
    orthanc = start_orthanc(workdir / "orthanc", dicomweb=True)
    try:
        yield orthanc.http_port, "/dicom-web/studies"
    finally:
        stop_process(orthanc.process)


def measure(case: Case, runs: int, workdir: Path) -> dict[str, tuple[float, float]] | None:
    """Median instances/s and MB/s of each receiver; None if the node has no STOW-RS route."""
    files = [
        make_instances(
            workdir / "data" / case.name / f"c{c}",
            small=case.small,
            count=case.requests * case.per_request,
            tag=f"stow-{case.name}-{c}",
        )
        for c in range(case.clients)
    ]
    bodies = [
        [body(f[r * case.per_request : (r + 1) * case.per_request]) for r in range(case.requests)]
        for f in files
    ]
    total = sum(len(f) for f in files)
    megabytes = sum(p.stat().st_size for f in files for p in f) / 1e6
    results = {}
    for name, receiver in (("node", node_stow), ("orthanc", orthanc_stow)):
        seconds = []
        for run in range(runs):
            run_dir = workdir / "runs" / case.name / name / str(run)
            with receiver(run_dir) as (port, path):
                if name == "node" and run == 0 and not endpoint_available(port, path):
                    return None
                seconds.append(send(port, path, bodies))
            shutil.rmtree(run_dir, ignore_errors=True)
        median = statistics.median(seconds)
        results[name] = (total / median, megabytes / median)
    return results


def run(*, smoke: bool = False, workdir: Path | None = None) -> Section:
    """Measure every case; ``smoke`` uses a few instances and one run."""
    cases = [
        Case("0.5 MB x 1", small=False, clients=1, requests=10, per_request=20),
        Case("0.5 MB x 4", small=False, clients=4, requests=5, per_request=10),
        Case("15 KB x 4", small=True, clients=4, requests=10, per_request=25),
    ]
    if smoke:  # one case covers the code (several clients); the sizes are the ingest cases'
        cases = [Case("0.5 MB x 4", small=False, clients=4, requests=1, per_request=3)]
    runs = 1 if smoke else 3
    section = Section("STOW-RS throughput (issue 6)")
    with tempfile.TemporaryDirectory(prefix="pacs-ai-node-bench-stow-", dir=workdir) as folder:
        for case in cases:
            name = f"STOW-RS {case.name}"
            results = measure(case, runs, Path(folder))
            if results is None:
                section.rows.append(not_measured(name, UNAVAILABLE))
                continue
            (node, node_mb), (orthanc, _) = results["node"], results["orthanc"]
            section.details.append(
                f"{case.name}: {case.clients} client(s) x {case.requests} request(s) x "
                f"{case.per_request} instance(s); node {node:.0f} inst/s ({node_mb:.1f} MB/s), "
                f"Orthanc {orthanc:.0f} inst/s"
            )
            section.rows.append(
                Row(
                    name=name,
                    node=f"{node:.0f} inst/s",
                    reference=f"Orthanc {orthanc:.0f} inst/s",
                    ratio=node / orthanc,
                    target="(none set)",
                )
            )
    if any(not r.note for r in section.rows):
        section.details.insert(
            0,
            "Receivers: the node (durable, ingest only) and Orthanc (DICOMweb plugin, "
            f"SyncStorageArea). Client: Python http.client, one keep-alive connection per "
            f"client thread. Median of {runs} run(s), fresh receiver each.",
        )
    return section


def main() -> None:
    """Run this section alone and print it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a few instances, one run")
    args = parser.parse_args()
    print_section(run(smoke=args.smoke))


if __name__ == "__main__":
    main()
