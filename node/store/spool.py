"""The spool: received bytes and result objects on disk, written atomically and fsynced."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["Spool"]


class Spool:
    """Files under one root: ``instances/`` (as received) and ``results/`` (what the node made).

    Every write goes to a temporary name in the target folder, is fsynced, renamed into place and
    the folder fsynced, so a crash never leaves a partially written file under its final name.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "instances").mkdir(parents=True, exist_ok=True)
        (root / "results").mkdir(parents=True, exist_ok=True)

    def instance_path(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        """Where an instance's bytes go, relative to the root."""
        return Path("instances") / study_uid / series_uid / f"{sop_uid}.dcm"

    def result_path(self, job_uid: str, name: str) -> Path:
        """Where a result object of a job goes, relative to the root."""
        return Path("results") / job_uid / f"{name}.dcm"

    def write(self, relative: Path, data: bytes) -> int:
        """Write ``data`` durably to ``relative`` (atomic replace); return the size."""
        with self.writing(relative) as handle:
            handle.write(data)
        return len(data)

    @contextlib.contextmanager
    def writing(self, relative: Path) -> Iterator[BinaryIO]:
        """A file to write ``relative``'s bytes into, durably in place (atomic replace) when the
        block ends without an exception, and gone when it raises: for objects written as they
        are encoded, never held whole in memory twice."""
        target = self.root / relative
        _make_dirs(target.parent)
        temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        try:
            with temporary.open("wb") as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            temporary.replace(target)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        _fsync_dir(target.parent)

    def absolute(self, relative: str | Path) -> Path:
        """The absolute path of a spool-relative path."""
        return self.root / relative

    def remove_temporaries(self) -> int:
        """Delete temporary files a crash left behind; return how many."""
        removed = 0
        for path in self.root.rglob(".*.tmp"):
            path.unlink(missing_ok=True)
            removed += 1
        return removed


def _make_dirs(path: Path) -> None:
    """Create ``path`` and its missing parents, fsyncing each new entry's parent folder."""
    missing: list[Path] = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    path.mkdir(parents=True, exist_ok=True)
    for created in reversed(missing):
        _fsync_dir(created.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
