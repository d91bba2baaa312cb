"""One association, from A-ASSOCIATE-RQ to release or abort, served in the connection's thread.

A blocking loop over the socket, with no queue and no polling between the bytes and the handler:
a P-DATA-TF PDU's command fragments are read into a small buffer, its dataset fragments straight
into the instance's buffer (``recv_into``, a few system calls per PDU), and the moment the last
fragment is in, the :class:`ServiceUser` stores the instance and the response goes out. What the
node decides (who may associate, what a C-STORE does) is the :class:`ServiceUser`'s; this module
only speaks the protocol (PS3.8 Upper Layer, PS3.7 C-STORE and C-ECHO).

A peer that breaks the protocol (an unexpected or malformed PDU, an unknown presentation context)
gets an A-ABORT and the connection is closed. A connection that says nothing for
``acse_timeout_s`` before its request, or ``network_timeout_s`` after, is aborted too.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from typing import Protocol

from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.presentation import PresentationContext

from node.ingest import wire
from node.ingest.negotiation import Negotiated, accept, read_request
from node.logging import get_logger

__all__ = ["Association", "ServiceUser"]

#: Largest A-ASSOCIATE-RQ read (a request proposing all 128 contexts with many transfer
#: syntaxes is about 60 KB).
MAX_REQUEST_BYTES = 1024 * 1024
#: Largest command set read (a C-STORE-RQ is about 200 bytes).
MAX_COMMAND_BYTES = 60_000
#: Dataset bytes are read in pieces of at most this size, so memory follows what arrives and
#: not what a PDV item claims.
_CHUNK = 1024 * 1024
_PDV_HEADER = struct.Struct(">LBB")
#: Status of a response to a DIMSE operation this node does not perform.
STATUS_UNRECOGNIZED_OPERATION = 0x0211
#: Status of a C-STORE-RQ that announces no dataset.
STATUS_NO_DATASET = 0xC000

log = get_logger(__name__)


class ServiceUser(Protocol):
    """What the node does at each step of an association (the DimseListener)."""

    def on_request(
        self, association: Association, request: A_ASSOCIATE
    ) -> tuple[int, int, int] | None:
        """Admit the association (None) or name the A-ASSOCIATE-RJ (result, source, reason)."""

    def on_accepted(self, association: Association, rejected: list[PresentationContext]) -> None:
        """The association is established; ``rejected`` are the contexts not accepted."""

    def on_store(
        self, association: Association, command: wire.Command, data: bytes
    ) -> tuple[int, str | None]:
        """Store one instance (Part 10 bytes, File Meta included); the status and ErrorComment."""

    def on_ended(self, association: Association, *, released: bool) -> None:
        """An admitted association ended: ``released`` cleanly, or aborted or dropped (called
        for every request :meth:`on_request` admitted, even if the answer then failed)."""


class _Closed(ConnectionError):
    """The peer closed the connection."""


class _Reader:
    """Reads a socket through a small buffer: headers from the buffer, payloads straight into
    their own buffers."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = bytearray(64 * 1024)
        self._view = memoryview(self._buffer)
        self._start = self._end = 0

    def exact(self, count: int) -> bytes:
        """Exactly ``count`` bytes (at most the buffer's size)."""
        if self._end - self._start < count:
            if self._start + count > len(self._buffer):
                pending = self._end - self._start
                # Copied out first: the two ranges may overlap, and a bytearray slice assigned
                # from a view of itself is copied with memcpy, whose result on overlap is
                # undefined.
                self._buffer[:pending] = bytes(self._view[self._start : self._end])
                self._start, self._end = 0, pending
            while self._end - self._start < count:
                got = self._sock.recv_into(self._view[self._end :])
                if not got:
                    raise _Closed
                self._end += got
        data = bytes(self._view[self._start : self._start + count])
        self._start += count
        return data

    def payload(self, count: int) -> bytearray:
        """Exactly ``count`` bytes in a new buffer, read into it directly."""
        out = bytearray(count)
        view = memoryview(out)
        have = min(count, self._end - self._start)
        view[:have] = self._view[self._start : self._start + have]
        self._start += have
        while have < count:
            got = self._sock.recv_into(view[have:])
            if not got:
                raise _Closed
            have += got
        return out

    def skip(self, count: int) -> None:
        """Read and drop ``count`` bytes."""
        while count:
            piece = min(count, len(self._buffer))
            self.exact(piece)
            count -= piece


class Association:
    """One accepted connection, served by :meth:`run` until it ends.

    Attributes ``calling_ae_title`` and ``called_ae_title`` are set once the request is read;
    ``association_id`` is the service user's to set.
    """

    def __init__(
        self,
        sock: socket.socket,
        peer: tuple[str, int] | None,
        user: ServiceUser,
        *,
        acse_timeout_s: float = 30.0,
        network_timeout_s: float = 60.0,
    ) -> None:
        self.sock = sock
        self.peer = peer
        self.calling_ae_title = ""
        self.called_ae_title = ""
        self.association_id: str | None = None
        self._user = user
        self._acse_timeout_s = acse_timeout_s
        self._network_timeout_s = network_timeout_s
        self._reader = _Reader(sock)
        self._negotiated: Negotiated | None = None
        self._admitted = False

    def run(self) -> None:
        """Serve the association; returns when it has ended and the socket is closed.

        A release is recorded (the service user's ``on_ended``) before the A-RELEASE-RP goes
        out, so a sender that sees its association released finds it released in the index:
        a clean release is a completeness signal.
        """
        released = ended = False
        try:
            self.sock.settimeout(self._acse_timeout_s)
            if self._establish():
                self.sock.settimeout(self._network_timeout_s)
                released = self._data_phase()
                if released:
                    ended = True
                    self._user.on_ended(self, released=True)
                    self.sock.sendall(wire.release_rp_pdu())
        except wire.ProtocolError as exc:
            log.warning("association.aborted", assoc_id=self.association_id, reason=str(exc))
            self._send_quietly(wire.abort_pdu(0x02, exc.reason))
        except TimeoutError:
            log.warning("association.aborted", assoc_id=self.association_id, reason="time-out")
            self._send_quietly(wire.abort_pdu(0x02, 0x00))
        except OSError:
            pass  # the peer went away (reset, closed); ended as not released
        finally:
            self._close()
            if self._admitted and not ended:
                self._user.on_ended(self, released=released)

    def _establish(self) -> bool:
        header = self._reader.exact(6)
        pdu_type, length = wire.pdu_header(header)
        if pdu_type == wire.A_ABORT:
            return False
        if pdu_type != wire.A_ASSOCIATE_RQ:
            raise wire.ProtocolError("expected an A-ASSOCIATE-RQ", 0x02)
        if length > MAX_REQUEST_BYTES:
            raise wire.ProtocolError("A-ASSOCIATE-RQ too large", 0x06)
        request = read_request(header + bytes(self._reader.payload(length)))
        self.calling_ae_title = str(request.calling_ae_title).strip()
        self.called_ae_title = str(request.called_ae_title).strip()
        rejection = self._user.on_request(self, request)
        if rejection is not None:
            self.sock.sendall(wire.reject_pdu(*rejection))
            return False
        self._admitted = True
        self._negotiated = accept(request)
        self.sock.sendall(self._negotiated.pdu)
        self._user.on_accepted(self, self._negotiated.rejected)
        return True

    def _data_phase(self) -> bool:
        """P-DATA until A-RELEASE-RQ (True; the caller answers it) or A-ABORT (False)."""
        assert self._negotiated is not None
        accepted = self._negotiated.accepted
        command_bytes = bytearray()
        command: wire.Command | None = None  # complete, waiting for its dataset
        context = 0
        chunks: list[bytes | bytearray] = []
        while True:
            pdu_type, length = wire.pdu_header(self._reader.exact(6))
            if pdu_type == wire.A_RELEASE_RQ:
                self._reader.skip(min(length, 4))
                return True
            if pdu_type == wire.A_ABORT:
                return False
            if pdu_type != wire.P_DATA_TF:
                raise wire.ProtocolError(f"unexpected PDU type 0x{pdu_type:02X}", 0x02)
            remaining = length
            while remaining:
                if remaining < 6:
                    raise wire.ProtocolError("P-DATA-TF ends inside a PDV item", 0x06)
                item_length, context_id, control = _PDV_HEADER.unpack(self._reader.exact(6))
                if item_length < 2 or item_length + 4 > remaining:
                    raise wire.ProtocolError("PDV item length does not fit its PDU", 0x06)
                if context_id not in accepted:
                    raise wire.ProtocolError("PDV of a presentation context not accepted", 0x06)
                remaining -= 4 + item_length
                size = item_length - 2
                if control & 0x01:  # a command fragment
                    if command is not None or len(command_bytes) + size > MAX_COMMAND_BYTES:
                        raise wire.ProtocolError("unexpected or oversized command", 0x06)
                    command_bytes += self._reader.payload(size)
                    if control & 0x02:
                        command, context = wire.decode_command(bytes(command_bytes)), context_id
                        command_bytes.clear()
                        if not command.has_dataset:
                            self._dispatch(command, context, None)
                            command = None
                        else:
                            abstract, transfer = accepted[context]
                            chunks = [
                                wire.file_meta(
                                    command.affected_sop_class_uid or abstract,
                                    command.affected_sop_instance_uid,
                                    transfer,
                                )
                            ]
                    continue
                if command is None or context_id != context:
                    raise wire.ProtocolError("dataset fragment without its command", 0x06)
                while size:
                    piece = min(size, _CHUNK)
                    chunks.append(self._reader.payload(piece))
                    size -= piece
                if control & 0x02:
                    self._dispatch(command, context, b"".join(chunks))
                    command, chunks = None, []

    def _dispatch(self, command: wire.Command, context_id: int, data: bytes | None) -> None:
        """Run one request and send its response."""
        field = command.command_field
        status: int
        comment: str | None
        if field == wire.C_STORE_RQ:
            if data is None:
                status, comment = STATUS_NO_DATASET, "C-STORE-RQ without a dataset"
            else:
                status, comment = self._user.on_store(self, command, data)
        elif field == wire.C_ECHO_RQ:
            status, comment = 0x0000, None
        elif field == wire.C_CANCEL_RQ:
            return  # nothing is in progress to cancel: one operation at a time
        else:
            status, comment = STATUS_UNRECOGNIZED_OPERATION, "operation not supported"
        assert self._negotiated is not None
        response = wire.encode_response(command, status, error_comment=comment)
        pdus = wire.p_data_pdus(context_id, response, self._negotiated.peer_max_pdu)
        self.sock.sendall(b"".join(pdus))

    def _send_quietly(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(data)

    def _close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
