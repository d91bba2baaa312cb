"""What ingest reads from a received instance: its header and the shape of its pixel data.

Pixels are never decoded here. The header is parsed up to the pixel data, and the pixel data is
checked for its *structure* only:

- the image's declared size (Rows x Columns x NumberOfFrames x SamplesPerPixel) is at most
  ``max_image_pixels``, so that a header announcing 65535 x 65535 never reaches a decoder;
- native (uncompressed) pixel data holds at least the bytes that size needs, and is not cut short;
- encapsulated (compressed) pixel data is a well-formed run of items ending with a sequence
  delimiter, every item inside the received bytes. The codestreams themselves are not looked at:
  a broken JPEG is accepted here and its job fails later ("pixel data not decodable").

Every value is read from the raw bytes of its element, without pydicom's value validation: that
validation logs the offending *value* (a UID, a description) through the ``pydicom`` logger, and
an unknown VR in a mutated header raises ``NotImplementedError`` when the value is converted.

Deflated datasets are inflated lazily, at most :data:`DEFLATED_HEADER_BUDGET` bytes for the header
plus what the declared pixel data needs, so a deflate bomb never lands in memory.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from typing import Any

from pydicom import config
from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset, read_preamble
from pydicom.tag import BaseTag
from pydicom.uid import UID
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32
from pydicom.values import convert_text

from node.errors import IngestError
from node.store.index import InstanceRecord

__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS",
    "DEFLATED_HEADER_BUDGET",
    "ParsedInstance",
    "parse_instance",
    "read_record",
]

#: Rows x Columns x NumberOfFrames x SamplesPerPixel above which an instance is refused: 512 Mi
#: pixel values (1 GiB at 16 bits), twice a 2000-slice 512 x 512 enhanced CT.
DEFAULT_MAX_IMAGE_PIXELS = 512 * 1024 * 1024

#: Most bytes a deflated dataset may inflate to before its pixel data.
DEFLATED_HEADER_BUDGET = 64 * 1024 * 1024

#: Values larger than this are skipped while parsing (none that ingest reads is near it).
_DEFER_BYTES = 1024 * 1024

_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_BE = "1.2.840.10008.1.2.2"
_DEFLATED = frozenset({"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.95"})
_NATIVE = frozenset({_IMPLICIT_LE, "1.2.840.10008.1.2.1", _EXPLICIT_BE, *_DEFLATED})

#: Pixel data elements and their bits per value (None: BitsAllocated says).
_PIXEL_TAGS: dict[int, int | None] = {0x7FE00010: None, 0x7FE00008: 32, 0x7FE00009: 64}
_ITEM = 0xFFFEE000
_SEQUENCE_DELIMITER = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF

_REQUIRED_UIDS = ("SOPInstanceUID", "SOPClassUID", "SeriesInstanceUID", "StudyInstanceUID")
_ROUTING_TEXT = ("Modality", "BodyPartExamined", "SeriesDescription")


@dataclass(frozen=True, slots=True)
class ParsedInstance:
    """An accepted instance's index record, and what was odd but tolerated in its header."""

    record: InstanceRecord
    #: One line per tolerated problem, naming the attribute, never its value.
    warnings: tuple[str, ...] = ()


def read_record(data: bytes, *, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> InstanceRecord:
    """Parse the header of an encoded instance (DICOM file format) into an index record.

    Raises
    ------
    IngestError
        If the bytes are not a dataset, a required UID is missing or invalid, or the pixel data
        is larger than ``max_image_pixels`` or malformed (see the module's docstring).
    """
    return parse_instance(data, max_image_pixels=max_image_pixels).record


def parse_instance(
    data: bytes, *, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> ParsedInstance:
    """Like :func:`read_record`, also returning the tolerated problems as warnings.

    Raises
    ------
    IngestError
        As :func:`read_record`; never any other exception for any input bytes.
    """
    try:
        return _Parser(data, max_image_pixels).parse()
    except IngestError:
        raise
    except (MemoryError, RecursionError) as exc:
        raise IngestError(f"dataset too large or too deeply nested ({type(exc).__name__})") from exc
    except Exception as exc:
        # pydicom and struct raise many kinds of errors on malformed input; every one of them
        # means the bytes cannot be understood.
        raise IngestError(f"not a parseable DICOM dataset ({type(exc).__name__})") from exc


class _Parser:
    def __init__(self, data: bytes, max_image_pixels: int) -> None:
        self.data = data
        self.max_image_pixels = max_image_pixels
        self.warnings: list[str] = []
        self.pixel: tuple[int, str | None, int] | None = None

    def parse(self) -> ParsedInstance:
        fp = io.BytesIO(self.data)
        read_preamble(fp, False)  # raises InvalidDicomError without "DICM"
        meta = read_dataset(fp, is_implicit_VR=False, is_little_endian=True, stop_when=_not_group_2)
        transfer_syntax = _text_value(meta, "TransferSyntaxUID", [default_encoding])
        if not transfer_syntax or not _uid(transfer_syntax).is_valid:
            raise IngestError("TransferSyntaxUID is missing or not a valid UID")
        source: _Source
        if transfer_syntax in _DEFLATED:
            source = _InflatingSource(self.data, fp.tell(), budget=DEFLATED_HEADER_BUDGET)
        else:
            source = _BufferSource(fp, len(self.data))
        ds = read_dataset(
            source,  # type: ignore[arg-type]  # a file-like for read_dataset's purposes
            is_implicit_VR=transfer_syntax == _IMPLICIT_LE,
            is_little_endian=transfer_syntax != _EXPLICIT_BE,
            stop_when=self._stop_at_pixels,
            defer_size=_DEFER_BYTES,
        )
        self._check_complete(ds, source)
        encodings = _encodings(ds)
        uids = {keyword: self._required_uid(ds, keyword) for keyword in _REQUIRED_UIDS}
        if self.pixel is not None:
            self._check_pixels(ds, source, transfer_syntax)
        return ParsedInstance(
            InstanceRecord(
                sop_instance_uid=uids["SOPInstanceUID"],
                sop_class_uid=uids["SOPClassUID"],
                series_instance_uid=uids["SeriesInstanceUID"],
                study_instance_uid=uids["StudyInstanceUID"],
                transfer_syntax_uid=transfer_syntax,
                routing_attributes=self._routing_attributes(ds, encodings, uids["SOPClassUID"]),
                expected_count=self._expected_count(ds, uids["SOPClassUID"]),
            ),
            tuple(self.warnings),
        )

    def _stop_at_pixels(self, tag: BaseTag, vr: str | None, length: int) -> bool:
        if int(tag) in _PIXEL_TAGS:
            self.pixel = (int(tag), vr, length)
            return True
        return False

    def _check_complete(self, ds: Dataset, source: _Source) -> None:
        """No element before the pixel data runs past the received bytes."""
        produced = source.produced()
        for tag in list(ds.keys()):
            element = ds.get_item(tag, keep_deferred=True)
            if (
                isinstance(element, RawDataElement)
                and element.length != _UNDEFINED
                and element.value_tell + element.length > produced
            ):
                raise IngestError(f"{_element_name(tag)} is cut short")

    def _required_uid(self, ds: Dataset, keyword: str) -> str:
        value = _text_value(ds, keyword, [default_encoding])
        if not value or not _uid(value).is_valid:
            raise IngestError(f"{keyword} is missing, empty or not a valid UID")
        return value

    def _routing_attributes(
        self, ds: Dataset, encodings: list[str], sop_class_uid: str
    ) -> dict[str, Any]:
        attributes: dict[str, Any] = {}
        for keyword in _ROUTING_TEXT:
            try:
                attributes[keyword] = _text_value(ds, keyword, encodings) or ""
            except IngestError:
                self.warnings.append(f"{keyword} cannot be read; taken as empty")
                attributes[keyword] = ""
        attributes["SOPClassUID"] = sop_class_uid
        try:
            image_type = _text_value(ds, "ImageType", encodings)
        except IngestError:
            self.warnings.append("ImageType cannot be read; taken as empty")
            image_type = None
        attributes["ImageType"] = [v.strip() for v in image_type.split("\\")] if image_type else []
        return attributes

    def _expected_count(self, ds: Dataset, sop_class_uid: str) -> int | None:
        """The number of instances the series will have, when the header says so.

        An enhanced (multi-frame) image holds the whole acquisition in one instance; a PET or
        NM image series has NumberOfSlices x NumberOfTimeSlices images; otherwise
        ImagesInAcquisition, when given.
        """
        if sop_class_uid in _ENHANCED_IMAGE_STORAGE:
            # Read without a second warning: _check_pixels reports a bad NumberOfFrames.
            try:
                frames = _text_value(ds, "NumberOfFrames", [default_encoding]) or ""
            except IngestError:
                frames = ""
            if frames.isdigit() and int(frames) > 1:
                return 1
        slices = _unsigned_short(ds, "NumberOfSlices")
        if slices:
            return slices * max(_unsigned_short(ds, "NumberOfTimeSlices") or 1, 1)
        count = self._integer_string(ds, "ImagesInAcquisition")
        return count if count and count > 0 else None

    def _integer_string(self, ds: Dataset, keyword: str) -> int | None:
        """An IS value; None (with a warning) when present but not one integer."""
        try:
            text = _text_value(ds, keyword, [default_encoding])
            return int(text) if text else None
        except (IngestError, ValueError):
            self.warnings.append(f"{keyword} is not an integer; ignored")
            return None

    def _check_pixels(self, ds: Dataset, source: _Source, transfer_syntax: str) -> None:
        assert self.pixel is not None
        tag, vr, length = self.pixel
        rows, columns = _unsigned_short(ds, "Rows"), _unsigned_short(ds, "Columns")
        if not rows or not columns:
            raise IngestError("pixel data without valid Rows and Columns")
        samples = _unsigned_short(ds, "SamplesPerPixel") or 1
        declared_frames = self._integer_string(ds, "NumberOfFrames")
        frames_known = "NumberOfFrames" not in ds or (declared_frames or 0) >= 1
        if declared_frames is not None and declared_frames < 1:
            self.warnings.append("NumberOfFrames is not positive; ignored")
        frames = declared_frames if declared_frames and declared_frames >= 1 else 1
        pixels = rows * columns * frames * samples
        if pixels > self.max_image_pixels:
            raise IngestError(  # short: it is also the C-STORE's ErrorComment (64 characters)
                f"image {rows}x{columns}x{frames}x{samples} exceeds max_image_pixels "
                f"{self.max_image_pixels}"
            )
        header = 8 if vr is None or vr not in EXPLICIT_VR_LENGTH_32 else 12
        source.seek(header, io.SEEK_CUR)
        encapsulated = transfer_syntax not in _NATIVE
        if length == _UNDEFINED:
            if not encapsulated:
                raise IngestError("pixel data of undefined length in a native transfer syntax")
            _walk_fragments(source)
            return
        if encapsulated and _is_known_encapsulated(transfer_syntax):
            raise IngestError("pixel data of a compressed transfer syntax has a defined length")
        bits = _PIXEL_TAGS[tag] or _unsigned_short(ds, "BitsAllocated")
        if not bits:
            raise IngestError("pixel data without a valid BitsAllocated")
        needed = (pixels * bits + 7) // 8
        if frames_known and length < needed:
            raise IngestError(f"pixel data has {length} bytes, {needed} needed")
        wanted = min(length, needed) if frames_known else length
        if source.skip(wanted) < wanted:
            raise IngestError(f"pixel data is cut short: {length} bytes declared")


def _uid(value: str) -> UID:
    """A UID object, without pydicom's validation (which logs an invalid value)."""
    return UID(value, validation_mode=config.IGNORE)


def _element_name(tag: int) -> str:
    """A standard element's keyword; never the tag of an unknown one, which mutated bytes make."""
    return keyword_for_tag(tag) or "a private or unknown element"


def _not_group_2(tag: BaseTag, _vr: str | None, _length: int) -> bool:
    return tag.group != 2


def _is_known_encapsulated(transfer_syntax: str) -> bool:
    uid = _uid(transfer_syntax)
    return uid.is_transfer_syntax and uid.is_encapsulated


def _raw_bytes(ds: Dataset, keyword: str) -> bytes | None:
    """The element's value as received; None when absent.

    Raises
    ------
    IngestError
        If the element is present but holds no plain value (a sequence, or one too large to read).
    """
    tag = tag_for_keyword(keyword)
    if tag is None or tag not in ds:
        return None
    element = ds.get_item(tag, keep_deferred=True)
    value = element.value if isinstance(element, RawDataElement | DataElement) else None
    if isinstance(value, bytes):
        return value
    if isinstance(element, RawDataElement) and element.length == 0:
        return b""
    raise IngestError(f"{keyword} cannot be read")


def _text_value(ds: Dataset, keyword: str, encodings: list[str]) -> str | None:
    """A string value decoded without validation (so never logged), stripped; None if absent."""
    raw = _raw_bytes(ds, keyword)
    if raw is None:
        return None
    try:
        value = convert_text(raw, encodings)
    except Exception as exc:
        raise IngestError(f"{keyword} cannot be decoded") from exc
    text = value if isinstance(value, str) else "\\".join(value)
    return text.strip("\0 ")


#: Multi-frame image storage SOP classes that hold an acquisition's frames in one instance:
#: Enhanced CT, MR, MR Color, PET, US Volume, XA, XRF, and the Legacy Converted Enhanced ones.
_ENHANCED_IMAGE_STORAGE = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.2.1",
        "1.2.840.10008.5.1.4.1.1.2.2",
        "1.2.840.10008.5.1.4.1.1.4.1",
        "1.2.840.10008.5.1.4.1.1.4.3",
        "1.2.840.10008.5.1.4.1.1.4.4",
        "1.2.840.10008.5.1.4.1.1.128.1",
        "1.2.840.10008.5.1.4.1.1.130",
        "1.2.840.10008.5.1.4.1.1.6.2",
        "1.2.840.10008.5.1.4.1.1.12.1.1",
        "1.2.840.10008.5.1.4.1.1.12.2.1",
    }
)


def _unsigned_short(ds: Dataset, keyword: str) -> int | None:
    """A US value, or None when absent or not exactly one value."""
    tag = tag_for_keyword(keyword)
    if tag is None or tag not in ds:
        return None
    element = ds.get_item(tag, keep_deferred=True)
    if not isinstance(element, RawDataElement) or not isinstance(element.value, bytes):
        return None
    if len(element.value) != 2:
        return None
    fmt = "<H" if element.is_little_endian else ">H"
    return int(struct.unpack(fmt, element.value)[0])


def _encodings(ds: Dataset) -> list[str]:
    try:
        raw = _text_value(ds, "SpecificCharacterSet", [default_encoding])
        if not raw:
            return [default_encoding]
        return list(convert_encodings([term.strip() for term in raw.split("\\")]))
    except Exception:
        return [default_encoding]


def _walk_fragments(source: _Source) -> None:
    """Encapsulated pixel data: items (offset table, fragments) up to a sequence delimiter."""
    items = 0
    while True:
        header = source.read(8)
        if len(header) < 8:
            raise IngestError("encapsulated pixel data has no sequence delimiter")
        group, element, length = struct.unpack("<HHL", header)
        tag = group << 16 | element
        if tag == _SEQUENCE_DELIMITER:
            break
        if tag != _ITEM or length == _UNDEFINED:
            raise IngestError("encapsulated pixel data holds something other than items")
        if source.skip(length) < length:
            raise IngestError("encapsulated pixel data is cut short")
        items += 1
    if items == 0:
        raise IngestError("encapsulated pixel data has no basic offset table item")


class _Source:
    """The dataset's bytes as a file-like for pydicom, that can also skip and say how far it got."""

    def read(self, size: int = -1) -> bytes:
        raise NotImplementedError

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        raise NotImplementedError

    def tell(self) -> int:
        raise NotImplementedError

    def produced(self) -> int:
        """How many bytes of the dataset exist up to the furthest point read."""
        raise NotImplementedError

    def skip(self, count: int) -> int:
        """Move forward ``count`` bytes; return how many there were."""
        raise NotImplementedError


class _BufferSource(_Source):
    """The received bytes themselves (every transfer syntax but the deflated ones)."""

    def __init__(self, fp: io.BytesIO, size: int) -> None:
        self._fp, self._size = fp, size

    def read(self, size: int = -1) -> bytes:
        return self._fp.read(size)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._fp.seek(offset, whence)

    def tell(self) -> int:
        return self._fp.tell()

    def produced(self) -> int:
        return self._size

    def skip(self, count: int) -> int:
        start = self._fp.tell()
        end = min(start + count, self._size)
        self._fp.seek(end)
        return max(end - start, 0)


class _InflatingSource(_Source):
    """A raw-deflate stream inflated on demand, keeping only a short look-back window.

    Skipping forward inflates and discards, so nothing large is ever held; at most ``budget``
    bytes are inflated in all (raised by :meth:`skip` for the pixel data ingest checks).
    """

    _LOOKBACK = 64 * 1024
    _CHUNK = 256 * 1024

    def __init__(self, data: bytes, offset: int, *, budget: int) -> None:
        self._input = memoryview(data)[offset:]
        self._input_pos = 0
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self._buffer = bytearray()
        self._buffer_start = 0  # absolute position of _buffer[0]
        self._pos = 0
        self._eof = False
        self.budget = budget

    def produced(self) -> int:
        return self._buffer_start + len(self._buffer)

    def tell(self) -> int:
        return self._pos

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self.budget
        self._fill(self._pos + size, keep_from=self._pos)
        start = self._pos - self._buffer_start
        chunk = bytes(self._buffer[start : start + size])
        self._pos += len(chunk)
        return chunk

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = offset if whence == io.SEEK_SET else self._pos + offset
        if whence not in (io.SEEK_SET, io.SEEK_CUR) or target < self._buffer_start:
            raise OSError("cannot seek backwards in a deflated dataset")
        self._fill(target, keep_from=target)
        self._pos = target  # may lie past the end, as a file's may
        return self._pos

    def skip(self, count: int) -> int:
        start = self._pos
        self.budget = max(self.budget, start + count)
        self.seek(count, io.SEEK_CUR)
        return min(self._pos, self.produced()) - start

    def _fill(self, upto: int, *, keep_from: int) -> None:
        """Inflate until ``upto`` bytes exist (or the stream ends), dropping what lies before
        ``keep_from`` less the look-back window."""
        while self.produced() < upto and not self._eof:
            if self.produced() >= self.budget:
                raise IngestError(f"deflated dataset inflates to more than {self.budget} bytes")
            pending: bytes | memoryview = self._inflater.unconsumed_tail
            if not pending:
                pending = self._input[self._input_pos : self._input_pos + self._CHUNK]
                self._input_pos += len(pending)
            if not pending:
                self._buffer += self._inflater.flush()
                self._eof = True
            else:
                limit = min(self._CHUNK, self.budget - self.produced())
                self._buffer += self._inflater.decompress(pending, limit)
                if self._inflater.eof:
                    self._eof = True
            drop = keep_from - self._LOOKBACK - self._buffer_start
            if drop > 0:
                del self._buffer[:drop]
                self._buffer_start += drop
