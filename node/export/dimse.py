"""C-STORE export to a DICOM peer with pynetdicom."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import A_ABORT

from node.config import DimseDestination
from node.errors import PeerRejected, PeerUnreachable
from node.export.requestor import answers_only_to_caller

__all__ = ["DimseExporter"]

# Statuses after which a retry may succeed: out of resources (0xA7xx) and the "refused: out of
# resources" family; anything else in the failure range is treated as a permanent refusal.
_RETRYABLE = range(0xA700, 0xA800)
# A-ASSOCIATE-RJ result: 1 is permanent, 2 transient (PS3.8 9.3.4).
_REJECTED_PERMANENT = 0x01
# Success, and the warnings that still mean "stored" (coercion, elements discarded).
_SUCCESS_OR_WARNING = frozenset({0x0000, 0xB000, 0xB006, 0xB007})
# Little-endian syntaxes pynetdicom converts between when sending; others are proposed as they are.
_UNCOMPRESSED = frozenset(
    {ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian}
)


class DimseExporter:
    """Sends result files to one DICOM peer by C-STORE over a single association."""

    def __init__(
        self, name: str, destination: DimseDestination, *, calling_ae_title: str, timeout_s: float
    ) -> None:
        self.name = name
        self._destination = destination
        self._calling = calling_ae_title
        self._timeout = timeout_s

    def send(self, paths: list[Path]) -> None:
        """Deliver ``paths``; see :class:`node.export.base.Exporter`.

        A peer that accepts the association and then aborts it in reply to a C-STORE, instead
        of answering with a status, is refusing on purpose (Orthanc does this for an AE title it
        does not know). The abort PDU sometimes loses the race with the closing connection, so
        one such abort is checked by a second association at once: aborted again, the refusal
        is permanent (:class:`PeerRejected`); anything else is handled as usual.
        """
        datasets = [pydicom.dcmread(path) for path in paths]
        try:
            self._send_over_one_association(datasets)
        except _AbortedInReply as first:
            if first.abort_pdu_seen:
                raise self._refused() from None
            try:
                self._send_over_one_association(datasets)
            except _AbortedInReply:
                raise self._refused() from None

    @property
    def _peer(self) -> str:
        return f"{self._destination.ae_title}@{self._destination.host}:{self._destination.port}"

    def _refused(self) -> PeerRejected:
        return PeerRejected(
            f"{self._peer} aborted the association instead of storing (it may not know the "
            f"calling AE title {self._calling!r})",
            peer=self.name,
            status=0,
        )

    def _send_over_one_association(self, datasets: Sequence[Dataset]) -> None:
        ae = AE(ae_title=self._calling)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self._timeout
        ae.connection_timeout = self._timeout
        for sop_class, syntaxes in _contexts(datasets):
            ae.add_requested_context(sop_class, syntaxes)
        abort_pdus: list[bool] = []

        def on_acse_received(event: evt.Event) -> None:
            if isinstance(getattr(event, "primitive", None), A_ABORT):
                abort_pdus.append(True)

        assoc = ae.associate(
            self._destination.host,
            self._destination.port,
            ae_title=self._destination.ae_title,
            evt_handlers=[(evt.EVT_ACSE_RECV, on_acse_received)],
        )
        if not assoc.is_established:
            result = getattr(assoc.acceptor.primitive, "result", None)
            if assoc.is_rejected and result == _REJECTED_PERMANENT:
                raise PeerRejected(
                    f"{self._peer} rejected the association permanently (e.g. an unknown calling "
                    f"AE title {self._calling!r})",
                    peer=self.name,
                    status=0,
                )
            raise PeerUnreachable(f"no association with {self._peer}", peer=self.name)
        try:
            accepted = {
                (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
                for cx in assoc.accepted_contexts
                if cx.abstract_syntax and cx.transfer_syntax
            }
            refused = sorted(
                {_needed_context(ds) for ds in datasets}
                - {(sop, "") for sop, ts in accepted if ts in _UNCOMPRESSED}
                - accepted
            )
            if refused:
                raise PeerRejected(
                    f"{self._peer} accepts no presentation context for "
                    + ", ".join(
                        f"SOP class {sop}" + (f" in transfer syntax {ts}" if ts else "")
                        for sop, ts in refused
                    ),
                    peer=self.name,
                    status=0,
                )
            answers_only_to_caller(assoc)
            sock = assoc.dul.socket.socket if assoc.dul.socket else None
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for ds in datasets:
                self._check_status(assoc.send_c_store(ds), assoc, abort_pdus)
        finally:
            if assoc.is_established:
                assoc.release()

    def _check_status(self, status: Dataset, assoc: Association, abort_pdus: list[bool]) -> None:
        if "Status" not in status:
            assoc.join(timeout=5)  # let the association's thread record how it ended
            if assoc.is_aborted:
                raise _AbortedInReply(abort_pdu_seen=bool(abort_pdus))
            raise PeerUnreachable(f"{self._peer} gave no C-STORE response", peer=self.name)
        code = int(status.Status)
        if code in _RETRYABLE:
            raise PeerUnreachable(f"{self._peer} answered 0x{code:04X}", peer=self.name)
        if code not in _SUCCESS_OR_WARNING:
            raise PeerRejected(
                f"{self._peer} refused the object with status 0x{code:04X}",
                peer=self.name,
                status=code,
            )


def _contexts(datasets: Sequence[Dataset]) -> list[tuple[str, list[str]]]:
    """Presentation contexts to propose: per SOP class the two uncompressed syntaxes, and one
    more context for each other (compressed) transfer syntax the files are encoded in."""
    contexts: set[tuple[str, tuple[str, ...]]] = set()
    for ds in datasets:
        sop_class, syntax = _needed_context(ds)
        contexts.add((sop_class, (ExplicitVRLittleEndian, ImplicitVRLittleEndian)))
        if syntax:
            contexts.add((sop_class, (syntax,)))
    return [(sop_class, list(syntaxes)) for sop_class, syntaxes in sorted(contexts)]


def _needed_context(ds: Dataset) -> tuple[str, str]:
    """(SOP class, transfer syntax) a dataset must be sent in; the syntax is empty when any
    uncompressed one will do (pynetdicom converts between them)."""
    meta = getattr(ds, "file_meta", None)
    syntax = str(getattr(meta, "TransferSyntaxUID", "") or "")
    return str(ds.SOPClassUID), "" if not syntax or syntax in _UNCOMPRESSED else syntax


class _AbortedInReply(Exception):
    """The peer aborted the association in reply to a C-STORE (no status came back)."""

    def __init__(self, *, abort_pdu_seen: bool) -> None:
        super().__init__("aborted in reply to C-STORE")
        self.abort_pdu_seen = abort_pdu_seen
