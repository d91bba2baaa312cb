"""Sending many files through one exporter: in bounded batches, with per-file refusals isolated.

This is what ``pacs-ai-node send`` runs. Each batch is one :meth:`Exporter.send` call (one
association, or one STOW-RS request), bounded by a count and by bytes on disk so that thousands of
files never sit in memory together. A batch the destination refuses is sent again one file at a
time, so only the files it refuses are counted as failed. A destination that cannot be reached is
tried again with backoff; when it stays unreachable the send stops.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pydicom.config

from node.errors import NodeError, PeerUnreachable
from node.export.base import Exporter, backoff_delay

__all__ = ["BulkPolicy", "BulkReport", "files_under", "send_files"]

# Media Storage Directory (DICOMDIR): an index of files on a medium, never sent to a PACS.
_DICOMDIR = "1.2.840.10008.1.3.10"


@dataclass(frozen=True, slots=True)
class BulkPolicy:
    """How a bulk send is cut into batches and retried.

    Attributes
    ----------
    batch_files
        At most this many files per batch.
    batch_bytes
        A batch is closed once its files reach this many bytes (a larger file goes alone).
    attempts
        Tries per batch while the destination cannot be reached.
    backoff_initial_s, backoff_max_s
        Wait after the first failed try, doubling up to the maximum.
    """

    batch_files: int = 32
    batch_bytes: int = 64 * 1024 * 1024
    attempts: int = 3
    backoff_initial_s: float = 2.0
    backoff_max_s: float = 30.0


@dataclass(slots=True)
class BulkReport:
    """What a bulk send did so far; ``stopped`` says why it ended early, if it did."""

    total: int
    sent: int = 0
    not_dicom: int = 0
    dicomdir: int = 0
    failed: list[tuple[Path, str]] = field(default_factory=list)
    not_attempted: int = 0
    stopped: str | None = None

    @property
    def skipped(self) -> int:
        """Files not sent on purpose: not DICOM, or a DICOMDIR."""
        return self.not_dicom + self.dicomdir

    @property
    def done(self) -> int:
        """Files dealt with: sent, failed or skipped."""
        return self.sent + len(self.failed) + self.skipped

    @property
    def complete(self) -> bool:
        """Every DICOM file was sent (skipped files do not count against it)."""
        return self.stopped is None and not self.failed and self.sent > 0


def files_under(path: Path) -> list[Path]:
    """``path`` itself if it is a file, else every regular file below it, sorted."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file())


def send_files(
    exporter: Exporter,
    files: list[Path],
    *,
    policy: BulkPolicy,
    progress: Callable[[BulkReport], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> BulkReport:
    """Send every DICOM file in ``files`` through ``exporter``; never raises for a peer's answer.

    Files that are not DICOM (no ``DICM`` preamble, or a header that does not parse) and
    DICOMDIRs are skipped; files without a SOP Class or Instance UID fail, since no destination
    can store them. ``progress`` is called after each batch. pydicom's value validation is off
    meanwhile (see :func:`_values_unchecked`).
    """
    report = BulkReport(total=len(files))
    with _values_unchecked():
        for batch in _batches(files, report, policy):
            try:
                _send_batch(exporter, batch, report, policy, sleep)
            except PeerUnreachable as exc:
                report.stopped = str(exc)
                report.not_attempted = report.total - report.done
                break
            finally:
                if progress is not None:
                    progress(report)
    return report


@contextmanager
def _values_unchecked() -> Iterator[None]:
    """pydicom's value validation off: its warnings quote the value (a name, a birth date), and
    files are passed on as they are, not judged."""
    settings = pydicom.config.settings
    saved = settings.reading_validation_mode, settings.writing_validation_mode
    settings.reading_validation_mode = settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        yield
    finally:
        settings.reading_validation_mode, settings.writing_validation_mode = saved


def _batches(files: list[Path], report: BulkReport, policy: BulkPolicy) -> Iterator[list[Path]]:
    batch: list[Path] = []
    size = 0
    for path in files:
        problem = _unsendable(path)
        if problem == "not DICOM":
            report.not_dicom += 1
            continue
        if problem == "DICOMDIR":
            report.dicomdir += 1
            continue
        if problem is not None:
            report.failed.append((path, problem))
            continue
        batch.append(path)
        size += path.stat().st_size
        if len(batch) >= policy.batch_files or size >= policy.batch_bytes:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _unsendable(path: Path) -> str | None:
    """Why ``path`` cannot be sent, or None. Reads the header only."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # whatever a damaged or foreign file makes the parser raise
        return "not DICOM"
    meta = getattr(ds, "file_meta", None)
    if str(getattr(meta, "MediaStorageSOPClassUID", "")) == _DICOMDIR:
        return "DICOMDIR"
    if not str(ds.get("SOPClassUID", "") or "") or not str(ds.get("SOPInstanceUID", "") or ""):
        return "no SOP Class or SOP Instance UID: no destination can store it"
    return None


def _send_batch(
    exporter: Exporter,
    batch: list[Path],
    report: BulkReport,
    policy: BulkPolicy,
    sleep: Callable[[float], None],
) -> None:
    """Send ``batch``; on a refusal send its files one by one to find the refused ones.

    Raises
    ------
    PeerUnreachable
        The destination stayed unreachable for ``policy.attempts`` tries.
    """
    try:
        _with_retries(exporter, batch, policy, sleep)
    except PeerUnreachable:
        raise
    except Exception as exc:  # a refusal, or a file the exporter cannot read: isolate it
        if len(batch) == 1:
            report.failed.append((batch[0], _describe(exc)))
            return
        for path in batch:
            _send_batch(exporter, [path], report, policy, sleep)
        return
    report.sent += len(batch)


def _with_retries(
    exporter: Exporter, batch: list[Path], policy: BulkPolicy, sleep: Callable[[float], None]
) -> None:
    for attempt in range(1, policy.attempts + 1):
        try:
            exporter.send(batch)
        except PeerUnreachable:
            if attempt == policy.attempts:
                raise
            sleep(
                backoff_delay(
                    attempt, initial_s=policy.backoff_initial_s, max_s=policy.backoff_max_s
                )
            )
        else:
            return


def _describe(exc: Exception) -> str:
    if isinstance(exc, NodeError):
        return str(exc)
    # Not the message: a parser's message may quote a value of the file, which can identify.
    return f"cannot be read or encoded ({type(exc).__name__})"
