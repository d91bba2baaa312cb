"""The one durable path every received instance takes, whatever carried it (C-STORE or STOW-RS).

Parse the header (no decode of the pixel data), write the bytes as received to the spool
(fsync, rename, directory fsync), index them, and only then report success. A refusal is a
:class:`NotStored` carrying the DICOM status that names it; the caller turns it into a C-STORE
status or a STOW-RS FailureReason. Log lines carry the caller's context (an association or
request id) and never a value from the dataset beyond shortened UIDs.
"""

from __future__ import annotations

import enum
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from node.errors import IngestError
from node.faults import crash_point
from node.ingest.committer import GroupCommitter
from node.ingest.header import DEFAULT_MAX_IMAGE_PIXELS, parse_instance
from node.logging import get_logger, short_uid
from node.store.database import Database
from node.store.index import InstanceRecord, Received, RecordOutcome
from node.store.spool import Spool

__all__ = ["InstanceStore", "NotStored", "Refusal", "Stored"]

_MB = 1024 * 1024

log = get_logger(__name__)


class Refusal(enum.IntEnum):
    """Why an instance was not stored, as the DICOM status (C-STORE) or FailureReason (STOW-RS)."""

    OUT_OF_RESOURCES = 0xA700
    SOP_CLASS_MISMATCH = 0xA900
    #: The instance is not of the study the STOW-RS request URL names. The A9xx "does not
    #: match" family; 0xA901 is the code other DICOMweb servers (Azure's) use for it.
    STUDY_MISMATCH = 0xA901
    CANNOT_UNDERSTAND = 0xC000


class NotStored(Exception):
    """An instance was refused; ``reason`` says why without any value from the dataset."""

    def __init__(self, refusal: Refusal, reason: str, record: InstanceRecord | None = None):
        super().__init__(reason)
        self.refusal = refusal
        self.reason = reason
        self.record = record


@dataclass(frozen=True, slots=True)
class Stored:
    """An instance that is on disk and indexed."""

    record: InstanceRecord
    size: int
    #: What it did to its series (a new instance in a routed series reopens it).
    outcome: RecordOutcome


class InstanceStore:
    """Stores received instances durably; shared by the DIMSE listener and the STOW-RS service.

    Parameters
    ----------
    min_free_disk_bytes
        Below this much free space on the spool's file system, stores are refused
        (:attr:`Refusal.OUT_OF_RESOURCES`); 0 disables the check.
    free_disk_bytes
        Returns the free space on the spool's file system; defaults to ``shutil.disk_usage``.
    """

    def __init__(
        self,
        spool: Spool,
        db: Database,
        *,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        min_free_disk_bytes: int = 0,
        free_disk_bytes: Callable[[], int] | None = None,
    ) -> None:
        self.spool = spool
        self.db = db
        self.min_free_disk_bytes = min_free_disk_bytes
        self._max_image_pixels = max_image_pixels
        self._free_disk_bytes = free_disk_bytes or (lambda: shutil.disk_usage(spool.root).free)
        self._index = GroupCommitter(db)

    def free_bytes_if_low(self) -> int | None:
        """The free bytes on the spool's file system when below the watermark, else None."""
        if self.min_free_disk_bytes <= 0:
            return None
        try:
            free = int(self._free_disk_bytes())
        except OSError as exc:
            # A spool that cannot even be measured fails at write time with 0xA700.
            log.error("ingest.disk_unknown", error=exc.strerror)
            return None
        return free if free < self.min_free_disk_bytes else None

    def log_disk_low(self, free: int, **fields: Any) -> None:
        """Log that free space is below the watermark (``fields``: the caller's context)."""
        log.warning(
            "ingest.disk_low",
            free_mb=free // _MB,
            min_free_mb=self.min_free_disk_bytes // _MB,
            **fields,
        )

    def store(
        self,
        data: bytes,
        *,
        source: str,
        association_id: str | None = None,
        announced_sop_class: str | None = None,
        study_instance_uid: str | None = None,
        context: dict[str, Any] | None = None,
    ) -> Stored:
        """Store one instance (Part 10 bytes, file meta included) and return once indexed.

        Parameters
        ----------
        source
            Who sent it: the calling AE title, or ``STOW-RS``; routing rules can match it.
        association_id
            The association that carried it; None for STOW-RS (its series then completes by
            count or quiet period).
        announced_sop_class
            The SOP class the sender announced (C-STORE's AffectedSOPClassUID), checked.
        study_instance_uid
            The study the request was addressed to (STOW-RS ``/studies/{uid}``), checked.
        context
            Fields for the log lines (``assoc_id`` or ``request_id``).

        Raises
        ------
        NotStored
            With the refusal's status; nothing was indexed.
        """
        fields = context or {}
        free = self.free_bytes_if_low()
        if free is not None:
            self.log_disk_low(free, reason="store refused (0xA700)", **fields)
            raise NotStored(Refusal.OUT_OF_RESOURCES, "free disk space is below min_free_disk_mb")
        try:
            parsed = parse_instance(data, max_image_pixels=self._max_image_pixels)
        except IngestError as exc:
            log.warning("instance.refused", reason=str(exc), **fields)
            raise NotStored(Refusal.CANNOT_UNDERSTAND, str(exc)) from None
        record = parsed.record
        for warning in parsed.warnings:
            log.warning("instance.bad_value", reason=warning, **fields)
        if announced_sop_class is not None and announced_sop_class != record.sop_class_uid:
            reason = "SOPClassUID differs from the announced AffectedSOPClassUID"
            log.warning("instance.refused", reason=reason, **fields)
            raise NotStored(Refusal.SOP_CLASS_MISMATCH, reason, record)
        if study_instance_uid is not None and study_instance_uid != record.study_instance_uid:
            reason = "StudyInstanceUID differs from the study in the request URL"
            log.warning("instance.refused", reason=reason, **fields)
            raise NotStored(Refusal.STUDY_MISMATCH, reason, record)
        relative = self.spool.instance_path(
            record.study_instance_uid, record.series_instance_uid, record.sop_instance_uid
        )
        try:
            size = self.spool.write(relative, data)
        except OSError as exc:
            log.error("instance.not_written", error=exc.strerror, **fields)
            refusal = NotStored(Refusal.OUT_OF_RESOURCES, "the spool cannot be written", record)
            raise refusal from None
        crash_point("ingest.after_write")
        try:
            outcome = self._index.record(
                Received(record, str(relative), size, association_id, source)
            )
        except SQLAlchemyError as exc:
            log.error("instance.not_indexed", error=type(exc).__name__, **fields)
            refusal = NotStored(Refusal.OUT_OF_RESOURCES, "the index cannot be written", record)
            raise refusal from None
        crash_point("ingest.after_index")
        if outcome == "reopened":
            log.info(
                "series.reopened",
                series=short_uid(record.series_instance_uid),
                reason="a new instance after routing; each rule's on_growth decides",
                **fields,
            )
        log.debug(
            "instance.stored",
            sop=short_uid(record.sop_instance_uid),
            series=short_uid(record.series_instance_uid),
            bytes=size,
            **fields,
        )
        return Stored(record, size, outcome)
