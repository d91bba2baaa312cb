"""The DICOM listener: C-ECHO and C-STORE SCP, on a plain port and optionally TLS.

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
disk space is below ``min_free_disk_mb`` or ``max_associations`` are being served:
rejected-transient tells a sender to try again later and costs it no transfer, where accepting
and answering every C-STORE with ``0xA700`` would make it send each instance in full only to have
it refused. An association that proposes nothing but Verification is still accepted while the
disk is low, so C-ECHO keeps answering; one already open when the disk fills gets ``0xA700`` for
each further C-STORE.

The protocol itself is :mod:`node.ingest.association` (one thread per connection, no polling);
this class is the node's side of it. One listener serves one process; several receiving
processes each run one on shared listening sockets (:mod:`node.ingest.receivers`).
"""

from __future__ import annotations

import socket
import ssl
import uuid
from collections.abc import Callable

from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.presentation import PresentationContext
from sqlalchemy.exc import SQLAlchemyError

from node.ingest import wire
from node.ingest.admission import Admission, LocalAdmission
from node.ingest.association import Association
from node.ingest.durable import InstanceStore, NotStored, Refusal
from node.ingest.header import DEFAULT_MAX_IMAGE_PIXELS, read_record
from node.ingest.negotiation import VERIFICATION
from node.ingest.server import AcceptLoop, listening_socket
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
#: A-ASSOCIATE-RJ for a called AE title that is not the node's: permanent, service user.
CALLED_AE_REJECTION = (0x01, 0x01, 0x07)
#: A-ASSOCIATE-RJ for a calling AE title not allowed: permanent, service user.
CALLING_AE_REJECTION = (0x01, 0x01, 0x03)
#: Connections, beyond max_associations, that may wait for their A-ASSOCIATE-RQ at once (a
#: connection that never sends one holds its thread for the ACSE time-out).
_SPARE_CONNECTIONS = 64

_CONTEXT_REJECTIONS = {
    0x01: "rejected by this node",
    0x02: "rejected, no reason given",
    0x03: "SOP class not supported",
    0x04: "no supported transfer syntax",
}
log = get_logger(__name__)


class DimseListener:
    """The node's DICOM Application Entity, listening for C-ECHO and C-STORE.

    Parameters
    ----------
    max_associations
        Associations served at once, on both ports together (and, with ``admission`` shared,
        across processes).
    min_free_disk_bytes
        Below this much free space on the spool's file system, new associations are rejected
        (transient) and C-STOREs answered ``0xA700``; 0 disables the check.
    free_disk_bytes
        Returns the free space on the spool's file system; defaults to ``shutil.disk_usage``.
        Tests pass their own to simulate a nearly full disk.
    tls_port, ssl_context
        With both set, a second server speaks DICOM over TLS on ``tls_port``.
    sockets
        Listening sockets to serve (plain, TLS or None) instead of binding ``port`` and
        ``tls_port``: a receiving process gets them from the node (:mod:`node.ingest.receivers`).
    admission
        The association slots; by default ``max_associations`` in this process.
    announce
        Log ``dimse.listening`` when started (a receiving process leaves it to the node).
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
        sockets: tuple[socket.socket, socket.socket | None] | None = None,
        admission: Admission | None = None,
        network_timeout_s: float = 60.0,
        acse_timeout_s: float = 30.0,
        announce: bool = True,
    ) -> None:
        self.store = InstanceStore(
            spool,
            db,
            max_image_pixels=max_image_pixels,
            min_free_disk_bytes=min_free_disk_bytes,
            free_disk_bytes=free_disk_bytes,
        )
        self._db = db
        self.ae_title = ae_title.strip()
        self._address = (bind_address, port)
        self._tls_address = (bind_address, tls_port) if tls_port is not None else None
        self._ssl_context = ssl_context
        if (tls_port is None) != (ssl_context is None):
            raise ValueError("tls_port and ssl_context go together")
        self._sockets = sockets
        self._allowed = [title.strip() for title in allowed_calling_ae_titles]
        self._require_called = require_called_ae_title
        self._max_associations = max_associations
        self._admission = admission or LocalAdmission(max_associations)
        self._timeouts = {"acse_timeout_s": acse_timeout_s, "network_timeout_s": network_timeout_s}
        self._announce = announce
        self._loops: list[AcceptLoop] = []
        self._plain: AcceptLoop | None = None
        self._tls: AcceptLoop | None = None

    @property
    def port(self) -> int:
        """The port actually listened on (useful when configured as 0)."""
        return self._plain.port if self._plain is not None else self._address[1]

    @property
    def tls_port(self) -> int | None:
        """The TLS port actually listened on; None without TLS."""
        if self._tls is not None:
            return self._tls.port
        return self._tls_address[1] if self._tls_address else None

    def start(self) -> None:
        """Start listening in background threads (binding first: a taken port raises here)."""
        if self._sockets is not None:
            plain, secure = self._sockets
        else:
            plain = listening_socket(self._address)
            secure = None
            if self._tls_address is not None:
                try:
                    secure = listening_socket(self._tls_address)
                except BaseException:
                    plain.close()
                    raise
        connections = self._max_associations + _SPARE_CONNECTIONS
        self._plain = AcceptLoop(plain, self._serve, max_connections=connections)
        self._loops = [self._plain]
        if secure is not None:
            if self._ssl_context is None:
                raise ValueError("a TLS socket needs ssl_context")
            self._tls = AcceptLoop(
                secure,
                self._serve,
                max_connections=connections,
                ssl_context=self._ssl_context,
                name="dimse-tls",
            )
            self._loops.append(self._tls)
        for loop in self._loops:
            loop.start()
        if not self._announce:
            return
        log.info("dimse.listening", port=self.port, ae_title=self.ae_title)
        if self._tls is not None:
            log.info("dimse.listening_tls", port=self.tls_port, ae_title=self.ae_title)

    def stop(self) -> None:
        """Stop listening and end open associations."""
        for loop in self._loops:
            loop.stop()
        self._loops = []
        self._plain = self._tls = None

    def _serve(self, sock: socket.socket, peer: tuple[str, int] | None) -> None:
        Association(sock, peer, self, **self._timeouts).run()

    # --- the service user of each association (node.ingest.association.ServiceUser) ----------

    def on_request(
        self, association: Association, request: A_ASSOCIATE
    ) -> tuple[int, int, int] | None:
        """Admit an association, or say why not (logged)."""
        calling, called = association.calling_ae_title, association.called_ae_title
        if self._require_called and called != self.ae_title:
            return self._rejected(
                association, CALLED_AE_REJECTION, "called AE title is not this node's"
            )
        if self._allowed and calling not in self._allowed:
            return self._rejected(
                association, CALLING_AE_REJECTION, "calling AE title is not allowed"
            )
        free = self.store.free_bytes_if_low()
        if free is not None:
            proposed = {
                str(context.abstract_syntax)
                for context in request.presentation_context_definition_list
            }
            if not proposed <= {VERIFICATION}:  # C-ECHO stores nothing: let it through
                self.store.log_disk_low(
                    free,
                    calling_ae=calling,
                    reason="association rejected (transient, temporary congestion)",
                )
                return DISK_LOW_REJECTION
        if not self._admission.acquire():
            return self._rejected(association, TOO_MANY_REJECTION, "too many associations")
        return None

    @staticmethod
    def _rejected(
        association: Association, rejection: tuple[int, int, int], reason: str
    ) -> tuple[int, int, int]:
        log.warning(
            "association.rejected",
            calling_ae=association.calling_ae_title,
            called_ae=association.called_ae_title,
            reason=reason,
        )
        return rejection

    def on_accepted(self, association: Association, rejected: list[PresentationContext]) -> None:
        """Record the association (its row is what completeness reads) and log it."""
        association.association_id = association_id = str(uuid.uuid4())
        calling = association.calling_ae_title
        try:
            open_association(self._db, association_id, calling)
        except SQLAlchemyError:
            log.exception("association.not_recorded", assoc_id=association_id)
        log.info("association.accepted", assoc_id=association_id, calling_ae=calling)
        for context in rejected:
            log.warning(
                "association.context_rejected",
                assoc_id=association_id,
                sop_class=str(context.abstract_syntax),
                transfer_syntax=[str(uid) for uid in context.transfer_syntax],
                reason=_CONTEXT_REJECTIONS.get(context.result or 0, "rejected"),
            )

    def on_store(
        self, association: Association, command: wire.Command, data: bytes
    ) -> tuple[int, str | None]:
        """Store one instance durably; its status and ErrorComment."""
        try:
            self.store.store(
                data,
                source=association.calling_ae_title,
                association_id=association.association_id,
                announced_sop_class=command.affected_sop_class_uid,
                context={"assoc_id": association.association_id},
            )
        except NotStored as refused:
            return int(refused.refusal), refused.reason
        return STATUS_SUCCESS, None

    def on_ended(self, association: Association, *, released: bool) -> None:
        """Give the slot back; record the end (a clean A-RELEASE is a completeness signal)."""
        self._admission.release()
        association_id = association.association_id
        if association_id is None:
            return
        try:
            close_association(self._db, association_id, released=released)
        except SQLAlchemyError:
            log.exception("association.close_not_recorded", assoc_id=association_id)
        log.info("association.ended", assoc_id=association_id, released=released)
