"""The DICOM listener: C-ECHO and C-STORE SCP on pynetdicom.

Each received instance is written as it came (no decode and re-encode), fsynced, and indexed
before the success status is returned. Failures answer with the matching status and never take
the listener down:

- ``0xA700`` Out of resources: the spool or the index could not be written.
- ``0xC000`` Cannot understand: the bytes are not a parseable dataset, or a required UID is missing
  or invalid.
- ``0xA900`` Data set does not match SOP class: the dataset's SOPClassUID differs from the one the
  peer announced.
"""

from __future__ import annotations

import io
import socket
import threading
import uuid
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy.exc import SQLAlchemyError

from node.errors import IngestError
from node.logging import get_logger, short_uid
from node.store.database import Database
from node.store.index import InstanceRecord, close_association, open_association, record_instance
from node.store.spool import Spool

__all__ = ["STATUS_CANNOT_UNDERSTAND", "STATUS_OUT_OF_RESOURCES", "DimseListener", "read_record"]

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_SOP_CLASS_MISMATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000

log = get_logger(__name__)

_ROUTING_KEYWORDS = ("Modality", "BodyPartExamined", "SeriesDescription", "SOPClassUID")


def read_record(data: bytes) -> InstanceRecord:
    """Parse the header of an encoded instance (DICOM file format) into an index record.

    Raises
    ------
    IngestError
        If the bytes are not a dataset or a required UID is missing or invalid.
    """
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except Exception as exc:
        raise IngestError(f"not a parseable DICOM dataset ({type(exc).__name__})") from exc
    uids = {}
    for keyword in ("SOPInstanceUID", "SOPClassUID", "SeriesInstanceUID", "StudyInstanceUID"):
        value = str(ds.get(keyword, "") or "").strip()
        if not value or not UID(value).is_valid:
            raise IngestError(f"{keyword} is missing, empty or not a valid UID")
        uids[keyword] = value
    transfer_syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    return InstanceRecord(
        sop_instance_uid=uids["SOPInstanceUID"],
        sop_class_uid=uids["SOPClassUID"],
        series_instance_uid=uids["SeriesInstanceUID"],
        study_instance_uid=uids["StudyInstanceUID"],
        transfer_syntax_uid=transfer_syntax,
        routing_attributes=_routing_attributes(ds),
        expected_count=_expected_count(ds),
    )


def _routing_attributes(ds: Dataset) -> dict[str, Any]:
    attributes: dict[str, Any] = {k: str(ds.get(k, "") or "") for k in _ROUTING_KEYWORDS}
    image_type = ds.get("ImageType")
    if image_type is None:
        attributes["ImageType"] = []
    elif isinstance(image_type, str):
        attributes["ImageType"] = [image_type]
    else:
        attributes["ImageType"] = [str(v) for v in image_type]
    return attributes


def _expected_count(ds: Dataset) -> int | None:
    value = ds.get("ImagesInAcquisition")
    try:
        count = int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
    return count if count and count > 0 else None


class DimseListener:
    """The node's DICOM Application Entity, listening for C-ECHO and C-STORE."""

    def __init__(
        self,
        *,
        ae_title: str,
        bind_address: str,
        port: int,
        spool: Spool,
        db: Database,
        allowed_calling_ae_titles: list[str],
    ) -> None:
        self._spool = spool
        self._db = db
        self._address = (bind_address, port)
        self._association_ids: dict[int, str] = {}
        self._lock = threading.Lock()
        self._server: ThreadedAssociationServer | None = None
        self.ae = AE(ae_title=ae_title)
        self.ae.maximum_pdu_size = 0  # unlimited: fewer, larger PDUs
        self.ae.network_timeout = 60
        self.ae.require_calling_aet = list(allowed_calling_ae_titles)
        self.ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax is not None:
                self.ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)

    @property
    def port(self) -> int:
        """The port actually listened on (useful when configured as 0)."""
        if self._server is None:
            return self._address[1]
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Start listening in background threads."""
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, self._on_connection_open),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_RELEASED, self._on_ended),
            (evt.EVT_ABORTED, self._on_ended),
            (evt.EVT_CONN_CLOSE, self._on_ended),
        ]
        server = self.ae.start_server(self._address, block=False, evt_handlers=handlers)
        assert isinstance(server, ThreadedAssociationServer)
        self._server = server
        log.info("dimse.listening", port=self.port, ae_title=self.ae.ae_title)

    def stop(self) -> None:
        """Stop listening and close open associations."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _association_id(self, event: evt.Event) -> str | None:
        with self._lock:
            return self._association_ids.get(id(event.assoc))

    def _on_connection_open(self, event: evt.Event) -> None:
        transport = event.assoc.dul.socket
        sock = transport.socket if transport is not None else None
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _on_accepted(self, event: evt.Event) -> None:
        association_id = str(uuid.uuid4())
        calling = event.assoc.requestor.ae_title
        with self._lock:
            self._association_ids[id(event.assoc)] = association_id
        try:
            open_association(self._db, association_id, calling)
        except SQLAlchemyError:
            log.exception("association.not_recorded", assoc_id=association_id)
        log.info("association.accepted", assoc_id=association_id, calling_ae=calling)

    def _on_ended(self, event: evt.Event) -> None:
        with self._lock:
            association_id = self._association_ids.pop(id(event.assoc), None)
        if association_id is None:
            return
        try:
            close_association(self._db, association_id)
        except SQLAlchemyError:
            log.exception("association.close_not_recorded", assoc_id=association_id)
        log.info("association.ended", assoc_id=association_id)

    def _on_echo(self, event: evt.Event) -> int:
        return STATUS_SUCCESS

    def _on_store(self, event: evt.Event) -> int:
        association_id = self._association_id(event)
        calling = event.assoc.requestor.ae_title
        try:
            data = event.encoded_dataset(include_meta=True)
            record = read_record(data)
        except IngestError as exc:
            log.warning("instance.refused", assoc_id=association_id, reason=str(exc))
            return STATUS_CANNOT_UNDERSTAND
        announced = str(event.request.AffectedSOPClassUID)
        if announced != record.sop_class_uid:
            log.warning(
                "instance.refused",
                assoc_id=association_id,
                reason="SOPClassUID differs from the announced AffectedSOPClassUID",
            )
            return STATUS_SOP_CLASS_MISMATCH
        relative = self._spool.instance_path(
            record.study_instance_uid, record.series_instance_uid, record.sop_instance_uid
        )
        try:
            size = self._spool.write(relative, data)
        except OSError as exc:
            log.error("instance.not_written", assoc_id=association_id, error=exc.strerror)
            return STATUS_OUT_OF_RESOURCES
        try:
            receiving = record_instance(
                self._db,
                record,
                path=str(relative),
                size=size,
                association_id=association_id,
                calling_ae_title=calling,
            )
        except SQLAlchemyError as exc:
            log.error("instance.not_indexed", assoc_id=association_id, error=type(exc).__name__)
            return STATUS_OUT_OF_RESOURCES
        if not receiving:
            log.warning(
                "instance.after_routing",
                assoc_id=association_id,
                series=short_uid(record.series_instance_uid),
                reason="series already routed; stored but not processed again",
            )
        log.debug(
            "instance.stored",
            assoc_id=association_id,
            sop=short_uid(record.sop_instance_uid),
            series=short_uid(record.series_instance_uid),
            bytes=size,
        )
        return STATUS_SUCCESS
