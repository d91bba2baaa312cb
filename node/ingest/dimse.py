"""The DICOM listener: C-ECHO and C-STORE SCP on pynetdicom, on a plain port and optionally TLS.

Each received instance is written as it came (no decode and re-encode), fsynced, and indexed
before the success status is returned. Failures answer with the matching status (and an
ErrorComment naming the problem, never a value from the dataset) and never take the listener
down:

- ``0xA700`` Out of resources: the spool or the index could not be written, or free disk space is
  below ``min_free_disk_mb``.
- ``0xC000`` Cannot understand: the bytes are not a parseable dataset, a required UID is missing
  or invalid, or the pixel data is larger than ``max_image_pixels`` or malformed
  (:mod:`node.ingest.header`).
- ``0xA900`` Data set does not match SOP class: the dataset's SOPClassUID differs from the one the
  peer announced.

Associations are rejected (A-ASSOCIATE-RJ) when the called AE title is not the node's (with
``require_called_ae_title``), the calling AE title is not allowed, or, *transiently*, while free
disk space is below ``min_free_disk_mb``: rejected-transient, "temporary congestion" tells a
sender to try again later and costs it no transfer, where accepting and answering every C-STORE
with ``0xA700`` would make it send each instance in full only to have it refused. An association
that proposes nothing but Verification is still accepted, so C-ECHO keeps answering; one already
open when the disk fills gets ``0xA700`` for each further C-STORE.
"""

from __future__ import annotations

import socket
import ssl
import threading
import uuid
from collections.abc import Callable
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer
from pynetdicom.utils import make_target
from sqlalchemy.exc import SQLAlchemyError

from node.ingest.durable import InstanceStore, NotStored, Refusal
from node.ingest.header import DEFAULT_MAX_IMAGE_PIXELS, read_record
from node.ingest.tls import TlsAssociationServer
from node.logging import get_logger
from node.store.database import Database
from node.store.index import close_association, open_association
from node.store.spool import Spool

__all__ = [
    "STATUS_CANNOT_UNDERSTAND",
    "STATUS_OUT_OF_RESOURCES",
    "STATUS_SOP_CLASS_MISMATCH",
    "DimseListener",
    "read_record",
]

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = int(Refusal.OUT_OF_RESOURCES)
STATUS_SOP_CLASS_MISMATCH = int(Refusal.SOP_CLASS_MISMATCH)
STATUS_CANNOT_UNDERSTAND = int(Refusal.CANNOT_UNDERSTAND)

#: A-ASSOCIATE-RJ while the disk is low: rejected-transient, by the DUL service provider
#: (presentation related), temporary congestion.
DISK_LOW_REJECTION = (0x02, 0x03, 0x01)
#: A-ASSOCIATE-RJ beyond ``max_associations``: rejected-transient, local limit exceeded.
TOO_MANY_REJECTION = (0x02, 0x03, 0x02)
#: Connections, beyond max_associations, that may wait for their A-ASSOCIATE-RQ at once.
_SPARE_CONNECTIONS = 64

_VERIFICATION_UID = "1.2.840.10008.1.1"
_CONTEXT_REJECTIONS = {
    0x01: "rejected by this node",
    0x02: "rejected, no reason given",
    0x03: "SOP class not supported",
    0x04: "no supported transfer syntax",
}
log = get_logger(__name__)


def _status(status: int, comment: str) -> Dataset:
    """A C-STORE response status with an ErrorComment (LO: at most 64 characters)."""
    response = Dataset()
    response.Status = status
    response.ErrorComment = comment[:64]
    return response


class DimseListener:
    """The node's DICOM Application Entity, listening for C-ECHO and C-STORE.

    Parameters
    ----------
    max_associations
        Associations served at once, on both ports together.
    min_free_disk_bytes
        Below this much free space on the spool's file system, new associations are rejected
        (transient) and C-STOREs answered ``0xA700``; 0 disables the check.
    free_disk_bytes
        Returns the free space on the spool's file system; defaults to ``shutil.disk_usage``.
        Tests pass their own to simulate a nearly full disk.
    tls_port, ssl_context
        With both set, a second server speaks DICOM over TLS on ``tls_port``.
    """

    def __init__(
        self,
        *,
        ae_title: str,
        bind_address: str,
        port: int,
        spool: Spool,
        db: Database,
        allowed_calling_ae_titles: list[str],
        require_called_ae_title: bool = True,
        max_associations: int = 10,
        min_free_disk_bytes: int = 0,
        free_disk_bytes: Callable[[], int] | None = None,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        tls_port: int | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.store = InstanceStore(
            spool,
            db,
            max_image_pixels=max_image_pixels,
            min_free_disk_bytes=min_free_disk_bytes,
            free_disk_bytes=free_disk_bytes,
        )
        self._db = db
        self._address = (bind_address, port)
        self._tls_address = (bind_address, tls_port) if tls_port is not None else None
        self._ssl_context = ssl_context
        if (tls_port is None) != (ssl_context is None):
            raise ValueError("tls_port and ssl_context go together")
        self._association_ids: dict[int, str] = {}
        self._lock = threading.Lock()
        self._server: ThreadedAssociationServer | None = None
        self._tls_server: TlsAssociationServer | None = None
        self.ae = AE(ae_title=ae_title)
        self.ae.maximum_pdu_size = 0  # unlimited: fewer, larger PDUs
        self.ae.network_timeout = 60
        self.ae.require_calling_aet = list(allowed_calling_ae_titles)
        self.ae.require_called_aet = require_called_ae_title
        # pynetdicom counts every open connection as an association, even one that has not sent
        # its A-ASSOCIATE-RQ yet, and a connection closed before sending one keeps its slot for
        # the ACSE timeout (30 s): a few port probes would lock every sender out. The limit is
        # kept here instead, over associations actually requested (_on_requested); pynetdicom's
        # only caps the connection threads.
        self._max_associations = max_associations
        self._requested: set[int] = set()
        self.ae.maximum_associations = max_associations + _SPARE_CONNECTIONS
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

    @property
    def tls_port(self) -> int | None:
        """The TLS port actually listened on; None without TLS."""
        if self._tls_server is not None:
            return int(self._tls_server.server_address[1])
        return self._tls_address[1] if self._tls_address else None

    def start(self) -> None:
        """Start listening in background threads (binding first: a taken port raises here)."""
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, self._on_connection_open),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_ABORTED, self._on_ended),
            (evt.EVT_CONN_CLOSE, self._on_ended),
        ]
        server = self.ae.start_server(self._address, block=False, evt_handlers=handlers)
        assert isinstance(server, ThreadedAssociationServer)
        self._server = server
        log.info("dimse.listening", port=self.port, ae_title=self.ae.ae_title)
        if self._tls_address is not None:
            try:
                self._tls_server = self._start_tls(handlers)
            except BaseException:
                self.stop()
                raise
            log.info("dimse.listening_tls", port=self.tls_port, ae_title=self.ae.ae_title)

    def _start_tls(self, handlers: list[Any]) -> TlsAssociationServer:
        assert self._tls_address is not None
        server = self.ae.make_server(
            self._tls_address,
            ssl_context=self._ssl_context,
            evt_handlers=handlers,
            server_class=TlsAssociationServer,
        )
        assert isinstance(server, TlsAssociationServer)
        # Registered with the AE as start_server does: association limits count it, and
        # server.shutdown() removes it again.
        self.ae._servers.append(server)
        thread = threading.Thread(
            target=make_target(server.serve_forever), name="dimse-tls", daemon=True
        )
        thread.start()
        return server

    def stop(self) -> None:
        """Stop listening and close open associations."""
        for server in (self._tls_server, self._server):
            if server is not None:
                server.shutdown()
        self._server = self._tls_server = None

    def _association_id(self, event: evt.Event) -> str | None:
        with self._lock:
            return self._association_ids.get(id(event.assoc))

    def _on_connection_open(self, event: evt.Event) -> None:
        transport = event.assoc.dul.socket
        sock = transport.socket if transport is not None else None
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _on_requested(self, event: evt.Event) -> None:
        """Reject, transiently, associations beyond the limit, and those that could store while
        the disk is low."""
        request = event.assoc.requestor.primitive
        assert request is not None  # set before EVT_REQUESTED
        calling = str(request.calling_ae_title)
        free = self.store.free_bytes_if_low()
        if free is not None:
            proposed = {
                str(context.abstract_syntax)
                for context in request.presentation_context_definition_list
            }
            if not proposed <= {_VERIFICATION_UID}:  # C-ECHO stores nothing: let it through
                self.store.log_disk_low(
                    free,
                    calling_ae=calling,
                    reason="association rejected (transient, temporary congestion)",
                )
                self._reject(event, DISK_LOW_REJECTION)
                return
        with self._lock:
            admitted = len(self._requested) < self._max_associations
            if admitted:
                self._requested.add(id(event.assoc))
        if not admitted:
            log.warning(
                "association.rejected",
                calling_ae=calling,
                called_ae=str(request.called_ae_title),
                reason="too many associations",
            )
            self._reject(event, TOO_MANY_REJECTION)

    @staticmethod
    def _reject(event: evt.Event, reason: tuple[int, int, int]) -> None:
        event.assoc.acse.send_reject(*reason)
        event.assoc.kill()  # as pynetdicom's own rejections: waits until the reject is sent

    def _on_rejected(self, event: evt.Event) -> None:
        with self._lock:
            self._requested.discard(id(event.assoc))
        request = event.assoc.requestor.primitive
        assert request is not None  # a rejection answers a request
        calling, called = str(request.calling_ae_title), str(request.called_ae_title)
        # The same order as pynetdicom's checks: a wrong called AE title wins.
        if self.ae.require_called_aet and called.strip() != self.ae.ae_title.strip():
            reason = "called AE title is not this node's"
        elif self.ae.require_calling_aet and calling.strip() not in self.ae.require_calling_aet:
            reason = "calling AE title is not allowed"
        else:
            reason = "too many connections"
        log.warning("association.rejected", calling_ae=calling, called_ae=called, reason=reason)

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
        for context in event.assoc.rejected_contexts:
            log.warning(
                "association.context_rejected",
                assoc_id=association_id,
                sop_class=str(context.abstract_syntax),
                transfer_syntax=[str(uid) for uid in context.transfer_syntax],
                reason=_CONTEXT_REJECTIONS.get(context.result or 0, "rejected"),
            )

    def _on_released(self, event: evt.Event) -> None:
        """A clean A-RELEASE: the sender says it is done (a completeness signal)."""
        self._on_ended(event, released=True)

    def _on_ended(self, event: evt.Event, *, released: bool = False) -> None:
        with self._lock:
            self._requested.discard(id(event.assoc))
            association_id = self._association_ids.pop(id(event.assoc), None)
        if association_id is None:
            return
        try:
            close_association(self._db, association_id, released=released)
        except SQLAlchemyError:
            log.exception("association.close_not_recorded", assoc_id=association_id)
        log.info("association.ended", assoc_id=association_id, released=released)

    def _on_echo(self, event: evt.Event) -> int:
        return STATUS_SUCCESS

    def _on_store(self, event: evt.Event) -> int | Dataset:
        try:
            self.store.store(
                event.encoded_dataset(include_meta=True),
                source=event.assoc.requestor.ae_title,
                association_id=(association_id := self._association_id(event)),
                announced_sop_class=str(event.request.AffectedSOPClassUID),
                context={"assoc_id": association_id},
            )
        except NotStored as refused:
            return _status(refused.refusal, refused.reason)
        return STATUS_SUCCESS
