"""Seeds and mutations for fuzzing ingest, and a C-STORE that sends a dataset's bytes as they are.

The seeds are real files from the shared data, one per transfer syntax and kind the listener meets
(implicit, explicit and big-endian little images, deflated, RLE, JPEG, JPEG 2000, SR, RT, a
multi-frame, and the malformed ones). The mutations are the ones that break parsers: bit flips,
truncation, inserted bytes and changed length fields (found by walking the real element headers).
"""

from __future__ import annotations

import functools
import io
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hypothesis import strategies as st
from pydicom.dataelem import RawDataElement
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import data_element_generator, read_preamble
from pydicom.filewriter import write_file_meta_info
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32
from pynetdicom import AE, _config, evt

from node.export.requestor import answers_only_to_caller
from tests.paths import shared_data_root

SEED_FILES = (
    "pydicom-3.0.2/test_files/CT_small.dcm",
    "pydicom-3.0.2/test_files/MR_small_implicit.dcm",
    "pydicom-3.0.2/test_files/MR_small_bigendian.dcm",
    "pydicom-3.0.2/test_files/MR_small_RLE.dcm",
    "pydicom-3.0.2/test_files/MR_small_jp2klossless.dcm",
    "pydicom-3.0.2/test_files/JPGExtended.dcm",
    "pydicom-3.0.2/test_files/image_dfl.dcm",
    "pydicom-3.0.2/test_files/badVR.dcm",
    "pydicom-3.0.2/test_files/JPEG-lossy.dcm",
    "pydicom-3.0.2/test_files/test-SR.dcm",
    "pydicom-3.0.2/test_files/rtdose.dcm",
    "pydicom-data-1.0.0/data/emri_small.dcm",
)

_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_BE = "1.2.840.10008.1.2.2"


@dataclass(frozen=True)
class Seed:
    """A real file's bytes, where its dataset starts, and where its length fields are."""

    name: str
    data: bytes
    dataset_offset: int
    #: (offset, size in bytes, byte order) of each element's length field, meta and dataset.
    length_fields: tuple[tuple[int, int, str], ...]
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


@functools.cache
def seeds() -> tuple[Seed, ...]:
    """The seed files, parsed once."""
    return tuple(_seed(shared_data_root() / name) for name in SEED_FILES)


def _seed(path: Path) -> Seed:
    data = path.read_bytes()
    fp = io.BytesIO(data)
    read_preamble(fp, False)
    fields: list[tuple[int, int, str]] = []
    meta: dict[int, bytes] = {}
    for element in data_element_generator(fp, False, True):
        if element.tag >> 16 != 2:
            fp.seek(element.value_tell - (12 if element.VR in EXPLICIT_VR_LENGTH_32 else 8))
            break
        fields.append(_length_field(element.value_tell, element.VR, "<"))
        meta[element.tag] = bytes(element.value or b"")
    offset = fp.tell()
    transfer_syntax = _text(meta[0x00020010])
    if transfer_syntax != "1.2.840.10008.1.2.1.99":  # deflated: no headers to find in the bytes
        implicit = transfer_syntax == _IMPLICIT_LE
        order = ">" if transfer_syntax == _EXPLICIT_BE else "<"
        for element in data_element_generator(fp, implicit, order == "<"):
            if isinstance(element, RawDataElement) and element.length != 0xFFFFFFFF:
                vr = None if implicit else element.VR
                fields.append(_length_field(element.value_tell, vr, order))
            if element.tag == 0x7FE00010:
                break
    return Seed(
        name=path.name,
        data=data,
        dataset_offset=offset,
        length_fields=tuple(fields),
        sop_class_uid=_text(meta[0x00020002]),
        sop_instance_uid=_text(meta[0x00020003]),
        transfer_syntax_uid=transfer_syntax,
    )


def _length_field(value_tell: int, vr: str | None, order: str) -> tuple[int, int, str]:
    if vr is None:
        return (value_tell - 4, 4, order)
    if vr in EXPLICIT_VR_LENGTH_32:
        return (value_tell - 4, 4, order)
    return (value_tell - 2, 2, order)


def _text(value: bytes) -> str:
    return value.decode("ascii").strip("\0 ")


# --- mutations -------------------------------------------------------------------------------

_INTERESTING_LENGTHS = (0, 1, 2, 3, 4, 7, 8, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF)
_INTERESTING_LENGTHS_32 = (0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF)


@st.composite
def bit_flips(draw: st.DrawFn, seed: Seed, *, start: int = 0) -> bytes:
    """1 to 16 flipped bits anywhere from ``start``."""
    data = bytearray(seed.data)
    for _ in range(draw(st.integers(1, 16))):
        position = draw(st.integers(start, len(data) - 1))
        data[position] ^= 1 << draw(st.integers(0, 7))
    return bytes(data)


@st.composite
def truncations(draw: st.DrawFn, seed: Seed, *, start: int = 0) -> bytes:
    """The file cut anywhere from ``start``."""
    return seed.data[: draw(st.integers(start, len(seed.data) - 1))]


@st.composite
def insertions(draw: st.DrawFn, seed: Seed, *, start: int = 0) -> bytes:
    """1 to 4 runs of 1 to 16 arbitrary bytes inserted anywhere from ``start``."""
    data = bytearray(seed.data)
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(start, len(data)))
        data[position:position] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


@st.composite
def length_changes(draw: st.DrawFn, seed: Seed, *, start: int = 0) -> bytes:
    """1 to 4 element length fields set to a boundary value, an off-by-some, or anything."""
    fields = [f for f in seed.length_fields if f[0] >= start]
    if not fields:  # a deflated dataset: no headers among its bytes
        return draw(bit_flips(seed, start=start))
    data = bytearray(seed.data)
    for _ in range(draw(st.integers(1, 4))):
        offset, size, order = draw(st.sampled_from(fields))
        fmt = order + ("H" if size == 2 else "L")
        (current,) = struct.unpack_from(fmt, data, offset)
        limit = 0xFFFF if size == 2 else 0xFFFFFFFF
        candidates = _INTERESTING_LENGTHS + (_INTERESTING_LENGTHS_32 if size == 4 else ())
        new = draw(
            st.one_of(
                st.sampled_from(candidates),
                st.integers(-16, 16).map(lambda d, c=current: c + d),
                st.integers(0, limit),
            )
        )
        struct.pack_into(fmt, data, offset, min(max(new, 0), limit))
    return bytes(data)


MUTATIONS = {
    "bit_flips": bit_flips,
    "truncations": truncations,
    "insertions": insertions,
    "length_changes": length_changes,
}


def mutated(kind: str, *, dataset_only: bool = False) -> st.SearchStrategy[tuple[Seed, bytes]]:
    """(seed, mutated bytes) with the given mutation, of the whole file or only its dataset."""
    mutate = MUTATIONS[kind]
    return st.deferred(lambda: st.sampled_from(seeds())).flatmap(
        lambda seed: st.tuples(
            st.just(seed), mutate(seed, start=seed.dataset_offset if dataset_only else 0)
        )
    )


# --- sending bytes as they are ---------------------------------------------------------------


def file_with_meta(
    dataset: bytes, *, sop_class: str, sop_instance: str, transfer_syntax: str
) -> bytes:
    """A DICOM file: preamble, a File Meta Information group, then ``dataset`` untouched."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = transfer_syntax
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    fp.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(fp, meta, enforce_standard=True)
    return bytes(fp.getvalue()) + dataset


@contextmanager
def raw_sender(
    port: int, contexts: list[tuple[str, str]], *, called: str = "AINODE"
) -> Iterator[RawSender]:
    """An association that sends files' dataset bytes as they are (pynetdicom's chunked mode)."""
    ae = AE(ae_title="FUZZER")
    # Every C-STORE must be answered, not answered fast: on a shared machine an fsync can stall
    # for longer than pynetdicom's default 30 s while other processes flush gigabytes.
    ae.dimse_timeout = 120
    for sop_class, transfer_syntax in contexts:
        ae.add_requested_context(sop_class, transfer_syntax)
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    assoc = ae.associate(
        "127.0.0.1", port, ae_title=called, evt_handlers=[(evt.EVT_CONN_OPEN, _no_delay)]
    )
    try:
        if not assoc.is_established:
            raise RuntimeError(f"no association with 127.0.0.1:{port}")
        answers_only_to_caller(assoc)
        yield RawSender(assoc)
    finally:
        if assoc.is_established:
            assoc.release()
        _config.STORE_SEND_CHUNKED_DATASET = previous


def _no_delay(event: evt.Event) -> None:
    """TCP_NODELAY on the sender's socket too: else each C-STORE waits ~40 ms for an ACK."""
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class RawSender:
    """Sends files over one association; each answer's Status, or None if none came back."""

    def __init__(self, assoc: object) -> None:
        self.assoc = assoc

    def send(self, path: Path) -> int | None:
        response = self.assoc.send_c_store(path)  # type: ignore[attr-defined]
        return int(response.Status) if "Status" in response else None
