"""STOW-RS (DICOMweb Store Instances, PS3.18 10.5) into the node, on its HTTP API.

``POST /dicomweb/studies`` and ``POST /dicomweb/studies/{StudyInstanceUID}`` take a
``multipart/related; type="application/dicom"`` body. The body is streamed through
python-multipart's parser: each part is held in memory only until it is complete, then stored
through the same durable path as a C-STORE (:class:`node.ingest.durable.InstanceStore`: on disk,
fsynced and indexed) before the next part is read, and long before the response. Memory
therefore grows with the largest instance, not with the body.

Statuses: 200 every instance stored; 202 some failed; 409 all failed (each failure in the
FailedSOPSequence with its FailureReason); 415 a media type other than multipart/related with
``type="application/dicom"``; 400 a body that is not well-formed multipart (instances stored
before the fault stay stored and are listed); 503 while free disk space is below the watermark.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse

from node.ingest.durable import InstanceStore, NotStored, Refusal
from node.logging import get_logger

__all__ = ["STOW_SOURCE", "StoreOutcome", "StowService"]

#: What a series received by STOW-RS records as its sender (``calling_ae`` in routing rules).
STOW_SOURCE = "STOW-RS"
DICOM_JSON = "application/dicom+json"

_REFERENCED_SOP_SEQUENCE = "00081199"
_FAILED_SOP_SEQUENCE = "00081198"
_FAILURE_REASON = "00081197"
_SOP_CLASS = "00081150"
_SOP_INSTANCE = "00081155"

log = get_logger(__name__)


@dataclass
class StoreOutcome:
    """What one request stored and refused, as the PS3.18 response's two sequences."""

    stored: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str | None, str | None, int]] = field(default_factory=list)

    def as_dicom_json(self) -> dict[str, Any]:
        """The Store Instances Response Module in the DICOM JSON model."""
        body: dict[str, Any] = {}
        if self.stored:
            body[_REFERENCED_SOP_SEQUENCE] = {
                "vr": "SQ",
                "Value": [_reference(cls, inst) for cls, inst in self.stored],
            }
        if self.failed:
            body[_FAILED_SOP_SEQUENCE] = {
                "vr": "SQ",
                "Value": [
                    {**_reference(cls, inst), _FAILURE_REASON: {"vr": "US", "Value": [reason]}}
                    for cls, inst, reason in self.failed
                ],
            }
        return body

    @property
    def status_code(self) -> int:
        """200 all stored, 202 some failed, 409 none stored."""
        if not self.failed:
            return 200
        return 202 if self.stored else 409


def _reference(sop_class: str | None, sop_instance: str | None) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if sop_class:
        item[_SOP_CLASS] = {"vr": "UI", "Value": [sop_class]}
    if sop_instance:
        item[_SOP_INSTANCE] = {"vr": "UI", "Value": [sop_instance]}
    return item


def _problem(
    status: int, title: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"type": "about:blank", "title": title, "status": status, "detail": detail},
        status_code=status,
        media_type="application/problem+json",
        headers=headers,
    )


class _Parts:
    """Collects the parts python-multipart reports, one completed part at a time."""

    def __init__(self, boundary: bytes) -> None:
        self.completed: list[tuple[str, bytearray]] = []
        self.finished = False
        self._data = bytearray()
        self._headers: dict[str, str] = {}
        self._field = bytearray()
        self._value = bytearray()
        self.parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._begin,
                "on_part_data": self._data_chunk,
                "on_part_end": self._end,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value,
                "on_header_end": self._header_end,
                "on_end": self._all_done,
            },
            max_header_count=16,
        )

    def _begin(self) -> None:
        self._data = bytearray()
        self._headers = {}

    def _data_chunk(self, data: bytes, start: int, end: int) -> None:
        self._data += data[start:end]

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        name = self._field.decode("latin-1").strip().lower()
        self._headers[name] = self._value.decode("latin-1").strip()
        self._field, self._value = bytearray(), bytearray()

    def _end(self) -> None:
        self.completed.append((self._headers.get("content-type", ""), self._data))
        self._data = bytearray()

    def _all_done(self) -> None:
        self.finished = True


def _dicom_boundary(content_type: str) -> bytes | None:
    """The boundary of a ``multipart/related; type="application/dicom"`` media type, or None."""
    media, params = parse_options_header(content_type)
    part_type = params.get(b"type", b"").decode("latin-1").strip().lower()
    if media.decode("latin-1").lower() != "multipart/related" or part_type != "application/dicom":
        return None
    return params.get(b"boundary") or None


def _part_is_dicom(content_type: str) -> bool:
    """A part without a Content-Type takes the body's type (application/dicom)."""
    media, _ = parse_options_header(content_type)
    return not media or media.decode("latin-1").lower() == "application/dicom"


class StowService:
    """Answers STOW-RS requests by storing each instance through ``store``."""

    def __init__(self, store: InstanceStore) -> None:
        self._store = store

    async def handle(self, request: Request, study_instance_uid: str | None) -> JSONResponse:
        """Store every instance of the request's body; answer with PS3.18's response."""
        request_id = uuid.uuid4().hex[:12]
        boundary = _dicom_boundary(request.headers.get("content-type", ""))
        if boundary is None:
            log.warning("stow.refused", request_id=request_id, reason="unsupported media type")
            return _problem(
                415,
                "Unsupported Media Type",
                'STOW-RS takes multipart/related; type="application/dicom" with a boundary',
            )
        accept = request.headers.get("accept", "")
        if accept and not any(
            kind in accept for kind in (DICOM_JSON, "application/json", "*/*", "application/*")
        ):
            return _problem(406, "Not Acceptable", f"responses are {DICOM_JSON}")
        free = self._store.free_bytes_if_low()
        if free is not None:
            self._store.log_disk_low(free, request_id=request_id, reason="STOW-RS refused (503)")
            return _problem(
                503,
                "Service Unavailable",
                "free disk space is below min_free_disk_mb; try again later",
                headers={"Retry-After": "60"},
            )
        outcome = StoreOutcome()
        try:
            await self._receive(request.stream(), boundary, study_instance_uid, outcome, request_id)
        except (MultipartParseError, _Truncated) as exc:
            log.warning(
                "stow.refused",
                request_id=request_id,
                reason=f"malformed multipart body: {exc}",
                stored=len(outcome.stored),
            )
            return _problem(
                400,
                "Bad Request",
                f"the body is not well-formed multipart/related: {exc}; the "
                f"{len(outcome.stored)} instance(s) before the fault were stored",
            )
        except ClientDisconnect:
            log.warning(
                "stow.disconnected",
                request_id=request_id,
                reason="client went away",
                stored=len(outcome.stored),
            )
            return _problem(400, "Bad Request", "the client disconnected")
        if not outcome.stored and not outcome.failed:
            return _problem(400, "Bad Request", "the body holds no parts")
        log.info(
            "stow.received",
            request_id=request_id,
            stored=len(outcome.stored),
            failed=len(outcome.failed),
            status=outcome.status_code,
        )
        return JSONResponse(
            outcome.as_dicom_json(), status_code=outcome.status_code, media_type=DICOM_JSON
        )

    async def _receive(
        self,
        chunks: AsyncIterator[bytes],
        boundary: bytes,
        study_instance_uid: str | None,
        outcome: StoreOutcome,
        request_id: str,
    ) -> None:
        parts = _Parts(boundary)
        async for chunk in chunks:
            parts.parser.write(chunk)
            while parts.completed:
                content_type, data = parts.completed.pop(0)
                await self._store_part(content_type, data, study_instance_uid, outcome, request_id)
        parts.parser.finalize()
        if not parts.finished:
            raise _Truncated("the body ended before its closing boundary")

    async def _store_part(
        self,
        content_type: str,
        data: bytearray,
        study_instance_uid: str | None,
        outcome: StoreOutcome,
        request_id: str,
    ) -> None:
        if not _part_is_dicom(content_type):
            log.warning("instance.refused", request_id=request_id, reason="part is not DICOM")
            outcome.failed.append((None, None, int(Refusal.CANNOT_UNDERSTAND)))
            return
        try:
            stored = await run_in_threadpool(
                self._store.store,
                bytes(data),
                source=STOW_SOURCE,
                study_instance_uid=study_instance_uid,
                context={"request_id": request_id},
            )
        except NotStored as refused:
            record = refused.record
            outcome.failed.append(
                (
                    record.sop_class_uid if record else None,
                    record.sop_instance_uid if record else None,
                    int(refused.refusal),
                )
            )
            return
        outcome.stored.append((stored.record.sop_class_uid, stored.record.sop_instance_uid))


class _Truncated(Exception):
    """The body ended inside a part or before the closing boundary."""
