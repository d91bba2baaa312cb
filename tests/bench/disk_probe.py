"""How many durable 0.5 MB writes a second the disk takes, without the node: the floor under ingest.

Not a section of ``python -m tests.bench``: it explains the receive rows. Each write creates a
file, writes 0.5 MB, fsyncs it and fsyncs its folder, as the spool does, in two ways:

- ``rename``: under a temporary name, renamed into place before the folder's fsync (the spool's
  way: never a partial file under its final name);
- ``direct``: under its final name (one rename and one journal commit fewer).

With 1 and with 4 threads, 3 rounds of 100 writes per thread each, in a temporary folder under
``--dir`` (default: the current folder, so that it is the disk the spool would use).

Run: ``.venv/bin/python -m tests.bench.disk_probe [--dir PATH]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from node.store.spool import Spool, _fsync_dir

SIZE = 512 * 1024
WRITES_PER_THREAD = 100
ROUNDS = 3


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def renamed(folder: Path, name: str, data: bytes) -> None:
    """The spool's way, by the spool itself: temporary name, fsync, rename, folder fsync."""
    Spool(folder).write(Path(name), data)


def direct(folder: Path, name: str, data: bytes) -> None:
    """Final name at once, fsync, folder fsync."""
    _write(folder / name, data)
    _fsync_dir(folder)  # the spool's own folder fsync


def writes_per_second(
    way: Callable[[Path, str, bytes], None],
    folder: Path,
    threads: int,
    tag: str,
    writes: int = WRITES_PER_THREAD,
) -> float:
    """Durable writes per second of ``threads`` threads writing ``writes`` files each."""
    data = os.urandom(SIZE)

    def worker(number: int) -> None:
        for k in range(writes):
            way(folder, f"{tag}-{number}-{k}", data)

    workers = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    started = time.perf_counter()
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    return threads * writes / (time.perf_counter() - started)


def main() -> None:
    """Measure and print both ways, 1 and 4 threads, each round."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path.cwd(), help="where to write")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pacs-ai-node-disk-probe-", dir=args.dir) as folder:
        for round_number in range(ROUNDS):
            for threads in (1, 4):
                figures = {
                    name: writes_per_second(
                        way, Path(folder), threads, f"{name}{round_number}{threads}"
                    )
                    for name, way in (("rename", renamed), ("direct", direct))
                }
                print(
                    f"round {round_number + 1}, {threads} thread(s): "
                    + ", ".join(f"{name} {value:.0f}/s" for name, value in figures.items())
                )


if __name__ == "__main__":
    main()
