"""The audit trail of model changes: one JSON line per change in ``<model>/history.jsonl``.

Every change ``pacs-ai-node models`` makes (add, promote, rollback, shadow, remove, load, unload)
appends who made it (the OS user, or ``--by``), when (UTC) and what, and fsyncs before the
command reports success. The file lives with the versions it describes, so it travels with the
repository (backups, copies to another node) and needs no running node or index. Lines are never
rewritten; a line that cannot be parsed (a torn write at a crash) is skipped when reading.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["HISTORY_FILE", "AuditEntry", "append", "current_user", "read_history"]

HISTORY_FILE = "history.jsonl"


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One change to a model: when, who, what (``action``), which version, and a detail."""

    at: str
    by: str
    action: str
    model: str
    version: str | None = None
    detail: str = ""


def current_user() -> str:
    """The OS user running the command (``"unknown"`` when it cannot be told)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


def append(
    root: Path,
    model: str,
    action: str,
    *,
    by: str,
    version: str | None = None,
    detail: str = "",
) -> AuditEntry:
    """Append one entry to ``<root>/<model>/history.jsonl`` durably (fsync) and return it."""
    entry = AuditEntry(
        at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        by=by,
        action=action,
        model=model,
        version=version,
        detail=detail,
    )
    path = root / model / HISTORY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(asdict(entry), ensure_ascii=False) + "\n").encode("utf-8")
    descriptor = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(descriptor).st_size
        if size and os.pread(descriptor, 1, size - 1) != b"\n":
            line = b"\n" + line  # a torn last line (a crash mid-write) stays alone
        os.write(descriptor, line)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    return entry


def read_history(root: Path, model: str) -> list[AuditEntry]:
    """Every entry of ``model``'s trail, oldest first (empty when there is none)."""
    path = root / model / HISTORY_FILE
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    entries = []
    for line in lines:
        try:
            entries.append(AuditEntry(**json.loads(line)))
        except (ValueError, TypeError):
            continue
    return entries
