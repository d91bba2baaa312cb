"""Where one C-STORE's time goes in the node: a per-instance breakdown of the durable path.

Not a section of ``python -m tests.bench`` (it prints no ratio): it explains the receive rows.
The node's DICOM listener runs in this process over a fresh spool and index; ``storescu`` sends
it ``count`` LIDC slices (0.5 MB, new UIDs) over one association, after 20 untimed ones. The
node's own functions are wrapped with timers for that run: the header parse, the spool write
(with its file fsync and folder fsync counted apart) and the index commit. What is left of the
per-instance time is receiving the bytes, answering, and ``storescu`` itself.

Run: ``.venv/bin/python -m tests.bench.receive_breakdown [--count N]``.
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.bench.common import read_lidc_in_z_order, write_series
from tests.peers import running_listener, storescu

WARM_UP = 20
#: The steps as printed: each indented one is part of the one above it.
ORDER = (
    "durable store, all",
    "header parse",
    "spool write (bytes, fsyncs, rename)",
    "fsync of the file and folder",
    "of which: fsync of the folder",
    "index commit (group commit)",
)


@contextmanager
def _timers(totals: dict[str, float]) -> Iterator[None]:
    """Wrap the durable path's steps with timers adding into ``totals`` (seconds)."""
    import node.ingest.committer as committer
    import node.ingest.durable as durable
    import node.store.spool as spool

    def timed(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                totals[name] += time.perf_counter() - started

        return wrapper

    def file_fsync(fd: int) -> None:
        # The spool's own fsync of a file; the folder's goes through _fsync_dir below.
        started = time.perf_counter()
        try:
            os.fsync(fd)
        finally:
            totals["fsync of the file and folder"] += time.perf_counter() - started

    replaced: list[tuple[Any, str, Any]] = [
        (durable, "parse_instance", timed("header parse", durable.parse_instance)),
        (spool.Spool, "write", timed("spool write (bytes, fsyncs, rename)", spool.Spool.write)),
        (spool, "_fsync_dir", timed("of which: fsync of the folder", spool._fsync_dir)),
        (spool, "os", _OsWithTimedFsync(file_fsync)),
        (
            committer.GroupCommitter,
            "record",
            timed("index commit (group commit)", committer.GroupCommitter.record),
        ),
        (durable.InstanceStore, "store", timed("durable store, all", durable.InstanceStore.store)),
    ]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in replaced]
    for owner, name, value in replaced:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


class _OsWithTimedFsync:
    """``os`` as the spool module sees it, with ``fsync`` timed."""

    def __init__(self, fsync: Callable[[int], None]) -> None:
        self.fsync = fsync

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


def measure(count: int) -> tuple[float, dict[str, float]]:
    """Seconds for ``count`` instances over one association, and each step's total seconds."""
    totals: dict[str, float] = collections.defaultdict(float)
    with tempfile.TemporaryDirectory(prefix="pacs-ai-node-bench-breakdown-") as folder:
        root = Path(folder)
        files = write_series(
            root / "series", WARM_UP + count, tag="breakdown", sources=read_lidc_in_z_order()
        )
        (root / "node").mkdir()
        with running_listener(root / "node") as listener:
            storescu(listener.port, files[:WARM_UP])
            with _timers(totals):
                started = time.perf_counter()
                sent = storescu(listener.port, files[WARM_UP:])
                elapsed = time.perf_counter() - started
            if sent.returncode != 0:
                raise RuntimeError(f"storescu failed: {sent.stderr[-500:]}")
    return elapsed, dict(totals)


def main() -> None:
    """Measure and print the breakdown."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=300, help="instances timed (default 300)")
    args = parser.parse_args()
    from node.logging import configure_logging

    configure_logging("json", "WARNING")
    elapsed, totals = measure(args.count)
    per = 1000.0 / args.count
    print(
        f"{args.count} instances (0.5 MB) over one association in {elapsed:.2f} s: "
        f"{args.count / elapsed:.0f} instances/s, {elapsed * per:.2f} ms each"
    )
    for name in ORDER:
        print(f"  {name}: {totals.get(name, 0.0) * per:.3f} ms")


if __name__ == "__main__":
    main()
