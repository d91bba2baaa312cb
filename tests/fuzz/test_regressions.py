"""What fuzzing ingest found, each kept as a small, exact test.

1. A mutated VR (``QI`` for ``UI``) in a required UID made pydicom raise ``NotImplementedError``
   when the value was converted, outside ``read_record``'s ``try``: the C-STORE handler died and
   pynetdicom answered ``0xC211`` on its own. Now every value is read from its raw bytes.
2. Converting an invalid value made pydicom log it (``Invalid value for VR UI: '1.2.ab'``) through
   the ``pydicom`` logger, which the node's logging lets through at WARNING: UIDs and descriptions
   reached the log. Values are no longer converted with validation.
3. A header cut short in the middle of an element was accepted, the element silently shortened.
4. (Found reading pydicom while fixing 1.) A Deflated dataset was inflated whole in memory before
   parsing: a few hundred kB that inflate to gigabytes could exhaust the node's memory.
"""

from __future__ import annotations

import functools
import io
import logging
import time
import tracemalloc
import zlib
from pathlib import Path

import pydicom
import pytest

from node.errors import IngestError
from node.ingest.header import DEFLATED_HEADER_BUDGET, parse_instance, read_record
from tests.fuzz.corpus import file_with_meta

pytestmark = pytest.mark.fuzz

CT_SMALL = "pydicom-3.0.2/test_files/CT_small.dcm"


def _ct_small(shared_data: Path) -> bytes:
    return (shared_data / CT_SMALL).read_bytes()


def _element_offset(data: bytes, group: int, element: int, vr: bytes) -> int:
    """Where an explicit-VR little-endian element's header is in ``data``."""
    return data.index(group.to_bytes(2, "little") + element.to_bytes(2, "little") + vr)


@pytest.mark.parametrize(
    ("group", "element", "vr", "keyword"),
    [(0x0008, 0x0018, b"UI", "SOPInstanceUID"), (0x0008, 0x0060, b"CS", "Modality")],
)
def test_an_unknown_vr_neither_crashes_nor_hides_the_value(
    shared_data: Path, group: int, element: int, vr: bytes, keyword: str
) -> None:
    original = _ct_small(shared_data)
    data = bytearray(original)
    at = _element_offset(data, group, element, vr)
    data[at + 4 : at + 6] = b"QI"
    with pytest.raises(NotImplementedError):  # what escaped read_record before
        getattr(pydicom.dcmread(io.BytesIO(data)), keyword)
    record = read_record(bytes(data))  # the value's bytes are still the value
    expected = pydicom.dcmread(io.BytesIO(original))
    assert record.sop_instance_uid == expected.SOPInstanceUID
    assert record.routing_attributes["Modality"] == expected.Modality == "CT"


def test_a_required_uid_that_is_a_sequence_is_an_ingest_error(shared_data: Path) -> None:
    data = bytearray(_ct_small(shared_data))
    at = _element_offset(data, 0x0008, 0x0018, b"UI")  # SOPInstanceUID, 2-byte length
    length = int.from_bytes(data[at + 6 : at + 8], "little")
    # The same element as an empty sequence of undefined length, then a sequence delimiter.
    replacement = data[at : at + 4] + b"SQ\0\0\xff\xff\xff\xff" + b"\xfe\xff\xdd\xe0\0\0\0\0"
    data[at : at + 8 + length] = replacement
    with pytest.raises(IngestError, match="SOPInstanceUID"):
        read_record(bytes(data))


def test_invalid_values_are_never_logged_by_pydicom(
    shared_data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ds = pydicom.dcmread(shared_data / CT_SMALL)
    secret_description = "DESCRIPTION-THAT-IS-FAR-TOO-LONG-FOR-A-LO-VALUE-" * 3
    ds.SeriesDescription = secret_description  # LO holds 64 characters: invalid
    buffer = io.BytesIO()
    ds.save_as(buffer)
    valid = buffer.getvalue()
    uid = ds.SeriesInstanceUID.encode()
    bad_uid = valid.replace(uid, uid[:-6] + b"1.2.ab")  # same length: only the value is bad
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    assert (
        parse_instance(valid)
        .record.routing_attributes["SeriesDescription"]
        .startswith("DESCRIPTION")
    )
    with pytest.raises(IngestError, match="SeriesInstanceUID"):
        read_record(bad_uid)
    logged = caplog.text
    assert "1.2.ab" not in logged
    assert "FAR-TOO-LONG" not in logged


def test_a_header_cut_inside_an_element_is_refused(shared_data: Path) -> None:
    data = _ct_small(shared_data)
    at = _element_offset(data, 0x0020, 0x0032, b"DS")  # ImagePositionPatient, after the UIDs
    read_record(data[:at])  # cut between elements: a shorter but whole dataset
    with pytest.raises(IngestError, match="ImagePositionPatient is cut short"):
        read_record(data[: at + 12])


@functools.cache
def _deflate_bomb() -> bytes:
    """A Deflated dataset whose first element holds 256 MiB of zeros, in about 260 kB."""
    size = 256 * 1024 * 1024
    header = b"\x03\x00\x10\x00OB\x00\x00" + size.to_bytes(4, "little")
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    chunks = [deflater.compress(header)]
    zeros = bytes(1024 * 1024)
    chunks += [deflater.compress(zeros) for _ in range(size // len(zeros))]
    chunks.append(deflater.flush())
    return file_with_meta(
        b"".join(chunks),
        sop_class="1.2.840.10008.5.1.4.1.1.7",
        sop_instance="1.2.3.4.5.6.7.8.9",
        transfer_syntax="1.2.840.10008.1.2.1.99",
    )


def test_a_deflate_bomb_is_refused_without_inflating_it() -> None:
    bomb = _deflate_bomb()
    assert len(bomb) < 1024 * 1024
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(IngestError, match="inflates to more than"):
            read_record(bomb)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024 * 1024  # a look-back window and zlib's buffers, never the 256 MiB
    assert time.perf_counter() - started < 5
    assert DEFLATED_HEADER_BUDGET < 256 * 1024 * 1024


def test_deflated_files_still_parse_as_before(shared_data: Path) -> None:
    path = shared_data / "pydicom-3.0.2/test_files/image_dfl.dcm"
    record = read_record(path.read_bytes())
    assert record.transfer_syntax_uid == "1.2.840.10008.1.2.1.99"
    assert record.sop_instance_uid == pydicom.dcmread(path).SOPInstanceUID
