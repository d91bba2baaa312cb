"""The bytes of the DICOM Upper Layer (PS3.8) and DIMSE command sets (PS3.7) that ingest needs.

Only what an acceptor of C-STORE and C-ECHO reads and writes is here, hand-coded, so the hot path
of a received instance costs a few slices and ``struct`` calls:

- PDU framing: the 6-byte PDU header, the PDV items of a P-DATA-TF PDU;
- A-ASSOCIATE-RJ, A-RELEASE-RP and A-ABORT PDUs (fixed layouts);
- command sets (implicit VR little endian, group 0000): reading a request's few elements, and
  writing C-STORE, C-ECHO and refusal responses;
- the File Meta Information group written in front of a received dataset (PS3.10), since DIMSE
  never carries it.

A-ASSOCIATE-RQ and -AC, with their variable items, are read and written by pynetdicom's PDU
classes (:mod:`node.ingest.negotiation`): once per association, not per instance.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

__all__ = [
    "A_ABORT",
    "A_ASSOCIATE_AC",
    "A_ASSOCIATE_RJ",
    "A_ASSOCIATE_RQ",
    "A_RELEASE_RP",
    "A_RELEASE_RQ",
    "C_ECHO_RQ",
    "C_STORE_RQ",
    "NO_DATASET",
    "P_DATA_TF",
    "Command",
    "ProtocolError",
    "abort_pdu",
    "decode_command",
    "encode_response",
    "file_meta",
    "p_data_pdus",
    "reject_pdu",
    "release_rp_pdu",
]

A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_RELEASE_RP = 0x06
A_ABORT = 0x07

C_STORE_RQ = 0x0001
C_ECHO_RQ = 0x0030
C_CANCEL_RQ = 0x0FFF
#: CommandDataSetType when no dataset follows the command.
NO_DATASET = 0x0101

_PDU_HEADER = struct.Struct(">BxL")
_ELEMENT_HEADER = struct.Struct("<HHL")
_US = struct.Struct("<H")


class ProtocolError(Exception):
    """The peer broke the Upper Layer or DIMSE protocol; the association is aborted.

    ``reason`` is an A-ABORT provider reason (PS3.8 9.3.8): 0x01 unrecognized PDU, 0x02
    unexpected PDU, 0x06 invalid PDU parameter value, 0x00 not specified.
    """

    def __init__(self, message: str, reason: int = 0x00) -> None:
        super().__init__(message)
        self.reason = reason


def pdu_header(header: bytes) -> tuple[int, int]:
    """The PDU type and the length of what follows the 6-byte header."""
    pdu_type, length = _PDU_HEADER.unpack(header)
    return int(pdu_type), int(length)


def reject_pdu(result: int, source: int, diagnostic: int) -> bytes:
    """An A-ASSOCIATE-RJ PDU."""
    return _PDU_HEADER.pack(A_ASSOCIATE_RJ, 4) + bytes((0, result, source, diagnostic))


def release_rp_pdu() -> bytes:
    """An A-RELEASE-RP PDU."""
    return _PDU_HEADER.pack(A_RELEASE_RP, 4) + bytes(4)


def abort_pdu(source: int = 0x02, reason: int = 0x00) -> bytes:
    """An A-ABORT PDU; source 0x02 is the service provider (this node's Upper Layer)."""
    return _PDU_HEADER.pack(A_ABORT, 4) + bytes((0, 0, source, reason))


def p_data_pdus(context_id: int, command: bytes, max_pdu_length: int) -> list[bytes]:
    """A command set as P-DATA-TF PDUs of at most ``max_pdu_length`` bytes (0: no limit)."""
    room = len(command) if max_pdu_length == 0 else max(max_pdu_length - 6, 1)
    pdus = []
    for start in range(0, len(command), room):
        fragment = command[start : start + room]
        last = start + room >= len(command)
        header = struct.pack(">LBB", len(fragment) + 2, context_id, 0x03 if last else 0x01)
        pdus.append(_PDU_HEADER.pack(P_DATA_TF, len(header) + len(fragment)) + header + fragment)
    return pdus


@dataclass(frozen=True, slots=True)
class Command:
    """The elements of a DIMSE request that ingest acts on."""

    command_field: int
    message_id: int
    has_dataset: bool
    affected_sop_class_uid: str
    affected_sop_instance_uid: str


#: (0000,0002) AffectedSOPClassUID, (0000,0100) CommandField, (0000,0110) MessageID,
#: (0000,0800) CommandDataSetType, (0000,1000) AffectedSOPInstanceUID.
_SOP_CLASS, _FIELD, _MESSAGE_ID, _DATASET_TYPE, _SOP_INSTANCE = (
    0x0002,
    0x0100,
    0x0110,
    0x0800,
    0x1000,
)


def decode_command(data: bytes) -> Command:
    """Read a command set (implicit VR little endian, group 0000).

    Raises
    ------
    ProtocolError
        If an element runs past the end, belongs to another group, or CommandField, MessageID or
        CommandDataSetType is missing or not one US value.
    """
    values: dict[int, bytes] = {}
    offset, end = 0, len(data)
    while offset < end:
        if offset + 8 > end:
            raise ProtocolError("command set ends inside an element header", 0x06)
        group, element, length = _ELEMENT_HEADER.unpack_from(data, offset)
        offset += 8
        if group != 0x0000 or offset + length > end:
            raise ProtocolError("malformed command set", 0x06)
        values[element] = data[offset : offset + length]
        offset += length
    try:
        (field,) = _US.unpack(values[_FIELD])
        (message_id,) = _US.unpack(values[_MESSAGE_ID])
        (dataset_type,) = _US.unpack(values[_DATASET_TYPE])
    except (KeyError, struct.error):
        raise ProtocolError("command set lacks CommandField, MessageID or its type", 0x06) from None
    return Command(
        command_field=field,
        message_id=message_id,
        has_dataset=dataset_type != NO_DATASET,
        affected_sop_class_uid=_text(values.get(_SOP_CLASS, b"")),
        affected_sop_instance_uid=_text(values.get(_SOP_INSTANCE, b"")),
    )


def _text(value: bytes) -> str:
    return value.decode("ascii", "replace").rstrip("\0 ")


def encode_response(request: Command, status: int, *, error_comment: str | None = None) -> bytes:
    """The response command set to ``request`` (C-STORE-RSP, C-ECHO-RSP, or a refusal).

    ``error_comment`` (LO, cut to 64 characters) goes in (0000,0902) when given.
    """
    elements: list[tuple[int, bytes]] = []
    if request.affected_sop_class_uid:
        elements.append((_SOP_CLASS, _uid(request.affected_sop_class_uid)))
    elements += [
        (_FIELD, _US.pack(request.command_field | 0x8000)),
        (0x0120, _US.pack(request.message_id)),  # MessageIDBeingRespondedTo
        (_DATASET_TYPE, _US.pack(NO_DATASET)),
        (0x0900, _US.pack(status)),
    ]
    if error_comment:
        comment = error_comment[:64].encode("ascii", "replace")
        elements.append((0x0902, comment + b" " * (len(comment) % 2)))
    if request.affected_sop_instance_uid:
        elements.append((_SOP_INSTANCE, _uid(request.affected_sop_instance_uid)))
    body = b"".join(
        _ELEMENT_HEADER.pack(0x0000, tag, len(value)) + value for tag, value in elements
    )
    return _ELEMENT_HEADER.pack(0x0000, 0x0000, 4) + struct.pack("<L", len(body)) + body


def _uid(value: str) -> bytes:
    raw = value.encode("ascii", "replace")
    return raw + b"\0" * (len(raw) % 2)


_IMPLEMENTATION_UID = _uid(PYNETDICOM_IMPLEMENTATION_UID)
_VERSION_NAME = PYNETDICOM_IMPLEMENTATION_VERSION.encode("ascii")
_VERSION_NAME += b" " * (len(_VERSION_NAME) % 2)
_PREAMBLE = b"\0" * 128 + b"DICM"


def file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str) -> bytes:
    """Preamble, prefix and File Meta Information (explicit VR little endian) for a dataset.

    The same elements pynetdicom's ``Event.file_meta`` writes: version, media storage SOP class
    and instance (from the C-STORE request), transfer syntax (from the presentation context),
    implementation class UID and version name.
    """
    body = b"".join(
        (
            _explicit(0x0001, b"OB", b"\x00\x01"),
            _explicit(0x0002, b"UI", _uid(sop_class_uid)),
            _explicit(0x0003, b"UI", _uid(sop_instance_uid)),
            _explicit(0x0010, b"UI", _uid(transfer_syntax_uid)),
            _explicit(0x0012, b"UI", _IMPLEMENTATION_UID),
            _explicit(0x0013, b"SH", _VERSION_NAME),
        )
    )
    return _PREAMBLE + _explicit(0x0000, b"UL", struct.pack("<L", len(body))) + body


def _explicit(element: int, vr: bytes, value: bytes) -> bytes:
    """A group-0002 element in explicit VR little endian."""
    if vr == b"OB":
        return struct.pack("<HH2sxxL", 0x0002, element, vr, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value
