"""C-STORE export to a DICOM peer with pynetdicom."""

from __future__ import annotations

import socket
from pathlib import Path

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from node.config import DimseDestination
from node.errors import PeerRejected, PeerUnreachable

__all__ = ["DimseExporter"]

# Statuses after which a retry may succeed: out of resources (0xA7xx) and the "refused: out of
# resources" family; anything else in the failure range is treated as a permanent refusal.
_RETRYABLE = range(0xA700, 0xA800)
# A-ASSOCIATE-RJ result: 1 is permanent, 2 transient (PS3.8 9.3.4).
_REJECTED_PERMANENT = 0x01


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
        """Deliver ``paths``; see :class:`node.export.base.Exporter`."""
        datasets = [pydicom.dcmread(path) for path in paths]
        ae = AE(ae_title=self._calling)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self._timeout
        ae.connection_timeout = self._timeout
        for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
            ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        peer = f"{self._destination.ae_title}@{self._destination.host}:{self._destination.port}"
        assoc = ae.associate(
            self._destination.host, self._destination.port, ae_title=self._destination.ae_title
        )
        if not assoc.is_established:
            result = getattr(assoc.acceptor.primitive, "result", None)
            if assoc.is_rejected and result == _REJECTED_PERMANENT:
                raise PeerRejected(
                    f"{peer} rejected the association permanently (e.g. an unknown calling AE "
                    f"title {self._calling!r})",
                    peer=self.name,
                    status=0,
                )
            raise PeerUnreachable(f"no association with {peer}", peer=self.name)
        try:
            accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
            refused = sorted({str(ds.SOPClassUID) for ds in datasets} - accepted)
            if refused:
                raise PeerRejected(
                    f"{peer} accepts no presentation context for SOP class {', '.join(refused)}",
                    peer=self.name,
                    status=0,
                )
            sock = assoc.dul.socket.socket if assoc.dul.socket else None
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for ds in datasets:
                status = assoc.send_c_store(ds)
                if "Status" not in status:
                    raise PeerUnreachable(f"{peer} gave no C-STORE response", peer=self.name)
                code = int(status.Status)
                if code in _RETRYABLE:
                    raise PeerUnreachable(f"{peer} answered 0x{code:04X}", peer=self.name)
                if code not in (0x0000, 0xB000, 0xB007, 0xB006):
                    raise PeerRejected(
                        f"{peer} refused the object with status 0x{code:04X}",
                        peer=self.name,
                        status=code,
                    )
        finally:
            if assoc.is_established:
                assoc.release()
