"""Triton against the embedded backend, and Triton's dynamic batching (issue 6's Triton rows).

These rows belong to the Triton issue; until its pieces are here (``node.backends.triton``, the
local tritonserver that ``tests/triton.py`` starts from ``.cache/triton``) the rows say "not
measured yet (Triton issue)". The hook is :func:`run`; when everything is present it measures:

- **Triton vs embedded**: :meth:`LungSegmentation.run` on the LIDC chest CT (55 slices) through
  :class:`TritonBackend` (gRPC, the shipped model repository, explicit model control) and through
  :class:`TorchBackend` (2 torch threads), each warmed up first, then run in turn; median of 5.
  Same model, same pipeline, so the difference is the serving path. Target: Triton <= 1.10 x
  embedded.
- **Dynamic batching**: 4 client threads, each sending one-slice requests back to back for a
  fixed count; slices/s with the shipped ``config.pbtxt`` (``dynamic_batching``) against a copy
  of the repository whose config has that block removed. Target: >= 1.5 x unbatched.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from tests.bench.common import Row, Section, not_measured, print_section, read_lidc_in_z_order
from tests.peers import REPO_ROOT

MODEL_REPOSITORY = REPO_ROOT / "model_repository"
TORCH_THREADS = 2
CONCURRENCY = 4
TIME_TARGET, BATCHING_TARGET = 1.10, 1.5
WHY = "Triton issue"


def triton_missing() -> str | None:
    """Why the Triton rows cannot be measured here, or None."""
    try:
        from node.backends.triton import TritonBackend  # noqa: F401
        from tests.triton import start_triton  # noqa: F401
        from tests.triton import triton_missing as server_missing
    except ImportError as exc:
        return f"{WHY}: {exc}"
    missing = server_missing()
    return None if missing is None else f"{WHY}: {missing}"


def alternate_pipeline_seconds(backends: list[Any], volume: Any, runs: int) -> list[list[float]]:
    """Seconds of ``LungSegmentation.run`` through each backend, ``runs`` times, in turn (so
    that every backend sees the same load on a shared machine), after one warm-up run each."""
    from node.pipelines.lung_seg import LungSegmentation

    pipeline = LungSegmentation()
    for backend in backends:
        pipeline.run(volume, backend, "lung_seg", "1")
    seconds: list[list[float]] = [[] for _ in backends]
    for _ in range(runs):
        for backend, times in zip(backends, seconds, strict=True):
            started = time.perf_counter()
            pipeline.run(volume, backend, "lung_seg", "1")
            times.append(time.perf_counter() - started)
    return seconds


def concurrent_throughput(url: str, requests: int) -> float:
    """Slices/s of :data:`CONCURRENCY` threads sending ``requests`` one-slice requests each."""
    from node.backends.triton import TritonBackend

    backend = TritonBackend(url)
    image = np.random.default_rng(0).random((1, 1, 256, 256), dtype=np.float32)
    backend.infer("lung_seg", "1", {"image": image})  # loads the model
    start = threading.Barrier(CONCURRENCY + 1)

    def client() -> None:
        start.wait()
        for _ in range(requests):
            backend.infer("lung_seg", "1", {"image": image})

    threads = [threading.Thread(target=client) for _ in range(CONCURRENCY)]
    for thread in threads:
        thread.start()
    start.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return CONCURRENCY * requests / (time.perf_counter() - started)


def unbatched_repository(folder: Path) -> Path:
    """A copy of the model repository whose lung_seg config has no ``dynamic_batching``."""
    copy = folder / "repository"
    shutil.copytree(MODEL_REPOSITORY, copy, ignore=shutil.ignore_patterns("__pycache__"))
    config = copy / "lung_seg" / "config.pbtxt"
    text = re.sub(r"dynamic_batching\s*\{[^}]*\}", "", config.read_text())
    config.write_text(text)
    return copy


def run(*, smoke: bool = False, workdir: Path | None = None) -> Section:
    """Measure the Triton rows, or say why they are not measured."""
    section = Section("Triton (issue 6, rows of the Triton issue)")
    missing = triton_missing()
    if missing is not None:
        section.rows += [
            not_measured("Triton vs embedded, LIDC", missing, f"≤ {TIME_TARGET}"),
            not_measured(f"dynamic batching at concurrency {CONCURRENCY}", missing),
        ]
        return section
    from node.assembly.volume import volume_from_datasets
    from node.backends.torch import TorchBackend
    from node.backends.triton import TritonBackend
    from tests.triton import start_triton

    runs, requests = (1, 5) if smoke else (5, 50)
    datasets = read_lidc_in_z_order()
    volume = volume_from_datasets(datasets[20:32] if smoke else datasets)
    with tempfile.TemporaryDirectory(prefix="pacs-ai-node-bench-triton-", dir=workdir) as folder:
        server = start_triton(MODEL_REPOSITORY, Path(folder) / "batched")
        try:
            embedded, served = alternate_pipeline_seconds(
                [
                    TorchBackend(MODEL_REPOSITORY, num_threads=TORCH_THREADS),
                    TritonBackend(server.grpc_url),
                ],
                volume,
                runs,
            )
            batched = concurrent_throughput(server.grpc_url, requests)
        finally:
            server.stop()
        server = start_triton(unbatched_repository(Path(folder)), Path(folder) / "unbatched")
        try:
            unbatched = concurrent_throughput(server.grpc_url, requests)
        finally:
            server.stop()
    slices = volume.shape[0]
    e, t = statistics.median(embedded), statistics.median(served)
    section.details += [
        f"LungSegmentation.run on {slices} slices, median of {runs} after a warm-up, the two "
        f"backends in turn: embedded "
        f"(torch, {TORCH_THREADS} threads) {e:.2f} s, Triton (gRPC, Python backend) {t:.2f} s.",
        f"{CONCURRENCY} threads x {requests} one-slice requests: {batched:.1f} slices/s with "
        f"dynamic batching, {unbatched:.1f} without.",
    ]
    section.rows += [
        Row(
            name=f"Triton vs embedded, LIDC {slices} slices",
            node=f"Triton {t:.2f} s",
            reference=f"embedded {e:.2f} s",
            ratio=t / e,
            target=f"≤ {TIME_TARGET}",
            met=t / e <= TIME_TARGET,
        ),
        Row(
            name=f"dynamic batching at concurrency {CONCURRENCY}",
            node=f"{batched:.1f} slices/s",
            reference=f"unbatched {unbatched:.1f} slices/s",
            ratio=batched / unbatched,
            target=f"≥ {BATCHING_TARGET}",
            met=batched / unbatched >= BATCHING_TARGET,
        ),
    ]
    return section


def main() -> None:
    """Run this section alone and print it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="12 slices, a few requests")
    args = parser.parse_args()
    print_section(run(smoke=args.smoke))


if __name__ == "__main__":
    main()
