"""Bad input over DIMSE, against the node's real listener, with real senders (dcmtk storescu where
it can send the file, pynetdicom where it cannot).

What ingest checks is the header and the *structure* of the pixel data (node.ingest.header), never
the pixels themselves. So a file whose pixel data is well formed but whose codestream is broken
(JPEG-lossy.dcm, JPEG2000-embedded-sequence-delimiter.dcm) or whose NumberOfFrames is not a number
(badVR.dcm) is stored and acknowledged: that is by design, and the job made from it fails later
with a reason (``AssemblyError``). What cannot be right whatever the decoder (pixel data shorter
than Rows x Columns x ... need, a declared image beyond ``max_image_pixels``, a dataset that does
not parse) is refused at once with 0xC000 and an ErrorComment naming the problem.

Every case checks the status, the log line (allow-listed keys only, no UID or patient value), and
that a good series sent right after, or at the same time, is stored.
"""

from __future__ import annotations

import concurrent.futures
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]
from sqlalchemy import select
from structlog.testing import capture_logs

from node.assembly.volume import load_volume
from node.errors import AssemblyError
from node.export.requestor import answers_only_to_caller
from node.ingest.dimse import STATUS_CANNOT_UNDERSTAND, DimseListener
from node.logging import ALLOWED_KEYS
from node.store.models import Instance, Series
from tests.fuzz.corpus import file_with_meta, raw_sender
from tests.peers import c_store, running_listener, storescu

pytestmark = pytest.mark.integration

TEST_FILES = "pydicom-3.0.2/test_files"


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[DimseListener]:
    with running_listener(tmp_path) as server:
        yield server


@pytest.fixture
def good_files(lidc_dir: Path) -> list[Path]:
    return sorted(lidc_dir.glob("*.dcm"))[:3]


def instances(listener: DimseListener) -> list[Instance]:
    with listener.store.db.session() as session:
        return list(session.scalars(select(Instance)))


def stored_sop_uids(listener: DimseListener) -> set[str]:
    return {i.sop_instance_uid for i in instances(listener)}


def assert_good_series_goes_through(listener: DimseListener, files: list[Path]) -> None:
    result = storescu(listener.port, files)
    assert result.returncode == 0, result.stderr
    sent = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in files}
    assert sent <= stored_sop_uids(listener)


def assert_clean_logs(logs: list[dict[str, Any]], *uids: str) -> None:
    for event in logs:
        assert set(event) <= ALLOWED_KEYS | {"log_level"}, event
        for uid in uids:
            assert uid not in repr(event), event


def send_with_comment(port: int, ds: pydicom.Dataset) -> tuple[int, str]:
    """C-STORE with pynetdicom; the status and the ErrorComment (if any)."""
    ae = AE(ae_title="SENDER")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="AINODE")
    assert assoc.is_established
    answers_only_to_caller(assoc)
    try:
        response = assoc.send_c_store(ds)
    finally:
        assoc.release()
    return int(response.Status), str(response.get("ErrorComment", ""))


# --- truncated -------------------------------------------------------------------------------


def test_truncated_pixel_data_is_refused(
    listener: DimseListener, shared_data: Path, good_files: list[Path]
) -> None:
    """MR_truncated.dcm declares 8192 bytes of pixel data and holds 8130. dcmtk will not send it
    at all; pydicom reads the 8130 bytes and pynetdicom sends them with a consistent length, so
    the node sees 64 x 64 x 16 bits in 8130 bytes: refused, nothing stored."""
    path = shared_data / TEST_FILES / "MR_truncated.dcm"
    refused_by_sender = storescu(listener.port, [path])
    assert refused_by_sender.returncode != 0
    assert "premature end of stream" in refused_by_sender.stderr
    ds = pydicom.dcmread(path)
    with capture_logs() as logs:
        status, comment = send_with_comment(listener.port, ds)
    assert status == STATUS_CANNOT_UNDERSTAND
    assert comment == "pixel data has 8130 bytes, 8192 needed"
    assert instances(listener) == []
    [refused] = [e for e in logs if e["event"] == "instance.refused"]
    assert refused["reason"] == "pixel data has 8130 bytes, 8192 needed"
    assert_clean_logs(logs, ds.SOPInstanceUID, ds.SeriesInstanceUID)
    assert_good_series_goes_through(listener, good_files)


def test_dataset_cut_short_on_the_wire_is_refused(
    listener: DimseListener, shared_data: Path
) -> None:
    """The bytes of a file cut in the middle of an element, sent as they are."""
    source = (shared_data / TEST_FILES / "CT_small.dcm").read_bytes()
    ds = pydicom.dcmread(io.BytesIO(source))
    path = listener.store.spool.root.parent / "cut.dcm"
    path.write_bytes(source[: source.index(b"\x20\x00\x32\x00DS") + 12])
    with (
        capture_logs() as logs,
        raw_sender(listener.port, [(CTImageStorage, ExplicitVRLittleEndian)]) as sender,
    ):
        assert sender.send(path) == STATUS_CANNOT_UNDERSTAND
    assert [e["reason"] for e in logs if e["event"] == "instance.refused"] == [
        "ImagePositionPatient is cut short"
    ]
    assert instances(listener) == []
    assert_clean_logs(logs, ds.SOPInstanceUID)


# --- bad values and broken codestreams: accepted by design ------------------------------------


def test_bad_vr_value_is_stored_with_a_warning(
    listener: DimseListener, shared_data: Path, good_files: list[Path]
) -> None:
    """badVR.dcm: NumberOfFrames is "1A". Ingest is tolerant of a bad value it does not need:
    stored, with ``instance.bad_value`` naming the attribute (never its value); decoding it will
    fail in the job."""
    path = shared_data / TEST_FILES / "badVR.dcm"
    with capture_logs() as logs:
        assert storescu(listener.port, [path]).returncode == 0
    assert stored_sop_uids(listener) == {pydicom.dcmread(path).SOPInstanceUID}
    [warning] = [e for e in logs if e["event"] == "instance.bad_value"]
    assert warning["reason"] == "NumberOfFrames is not an integer; ignored"
    assert "1A" not in repr(logs)
    assert_clean_logs(logs, pydicom.dcmread(path).SOPInstanceUID)
    [instance] = instances(listener)
    with pytest.raises(AssemblyError, match="pixel data not decodable"):  # what the job says
        load_volume([listener.store.spool.absolute(instance.path)])
    assert_good_series_goes_through(listener, good_files)


@pytest.mark.parametrize(
    ("name", "propose"),
    [("JPEG-lossy.dcm", "-xx"), ("JPEG2000-embedded-sequence-delimiter.dcm", "-xw")],
)
def test_broken_codestream_is_stored_as_sent(
    listener: DimseListener, shared_data: Path, good_files: list[Path], name: str, propose: str
) -> None:
    """Well-formed encapsulated pixel data around a codestream no decoder can read (a broken SOS;
    a sequence delimiter inside the JPEG 2000 stream). dcmtk sends the file's own bytes in its own
    transfer syntax; the node stores them untouched. Decoding is the job's business."""
    path = shared_data / TEST_FILES / name
    with capture_logs() as logs:
        sent = storescu(listener.port, [path], extra=(propose,))
    assert sent.returncode == 0, sent.stderr
    [instance] = instances(listener)
    stored = pydicom.dcmread(listener.store.spool.absolute(instance.path))
    original = pydicom.dcmread(path)
    assert stored.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert stored.PixelData == original.PixelData
    assert [e for e in logs if e["event"] in ("instance.refused", "instance.bad_value")] == []
    with pytest.raises(Exception):  # noqa: B017, PT011  # the decoder's own error, whatever it is
        stored.pixel_array  # noqa: B018
    # Its job fails with a reason (these NM images are not cross-sectional, so before decoding).
    with pytest.raises(AssemblyError):
        load_volume([listener.store.spool.absolute(instance.path)])
    assert_good_series_goes_through(listener, good_files)


# --- file meta -------------------------------------------------------------------------------


def test_missing_file_meta(listener: DimseListener, shared_data: Path) -> None:
    """DIMSE never carries the File Meta Information: the node writes its own, from the
    presentation context (transfer syntax) and the C-STORE request (SOP class and instance).

    - no_meta.dcm starts with a stray byte before its first element; read as pydicom does
      (``force=True``) it is one unknown element and pynetdicom cannot even address it, and its
      bytes sent as they are do not parse: 0xC000.
    - rtstruct.dcm has no File Meta either but parses; sent by pynetdicom with a transfer syntax
      chosen by the sender, it is stored with the node's File Meta.
    """
    no_meta = shared_data / TEST_FILES / "no_meta.dcm"
    with pytest.raises(AttributeError):
        c_store(listener.port, pydicom.dcmread(no_meta, force=True))
    raw = no_meta.read_bytes()
    path = listener.store.spool.root.parent / "no_meta_as_sent.dcm"
    sop_instance = generate_uid()
    path.write_bytes(
        file_with_meta(
            raw,
            sop_class=CTImageStorage,
            sop_instance=sop_instance,
            transfer_syntax=ExplicitVRLittleEndian,
        )
    )
    with (
        capture_logs() as logs,
        raw_sender(listener.port, [(CTImageStorage, ExplicitVRLittleEndian)]) as sender,
    ):
        assert sender.send(path) == STATUS_CANNOT_UNDERSTAND
    assert [e["event"] for e in logs if e["event"] == "instance.refused"] == ["instance.refused"]

    ds = pydicom.dcmread(shared_data / TEST_FILES / "rtstruct.dcm", force=True)
    assert "TransferSyntaxUID" not in getattr(ds, "file_meta", FileMetaDataset())
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    assert c_store(listener.port, ds) == 0x0000
    [instance] = instances(listener)
    stored = pydicom.dcmread(listener.store.spool.absolute(instance.path))
    assert stored.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert stored.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
    assert stored.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian


# --- duplicates ------------------------------------------------------------------------------


def test_duplicate_sop_instance_uid_replaces_the_first(
    listener: DimseListener, shared_data: Path
) -> None:
    files = sorted((shared_data / "dcmqi/ct-3slice_with_SEG/CT").glob("*.dcm"))
    assert storescu(listener.port, files).returncode == 0
    first = pydicom.dcmread(files[0])
    changed = pydicom.dcmread(files[0])
    changed.ImageComments = "second copy"
    assert c_store(listener.port, changed) == 0x0000
    # The same file twice within one association, too.
    assert storescu(listener.port, [files[1], files[1]]).returncode == 0
    with listener.store.db.session() as session:
        series = session.scalars(select(Series)).one()
        count = series.instance_count
        rows = list(session.scalars(select(Instance)))
    assert count == len(rows) == 3
    [row] = [r for r in rows if r.sop_instance_uid == first.SOPInstanceUID]
    stored = pydicom.dcmread(listener.store.spool.absolute(row.path))
    assert stored.ImageComments == "second copy"
    assert len(list((listener.store.spool.root / "instances").rglob("*.dcm"))) == 3


# --- giant declared dimensions -----------------------------------------------------------------


def _giant(shared_data: Path) -> pydicom.Dataset:
    ds = pydicom.dcmread(shared_data / TEST_FILES / "CT_small.dcm")
    ds.Rows = ds.Columns = 65535  # with the 128 x 128 pixel data still
    ds.SOPInstanceUID = generate_uid()
    return ds


def test_giant_declared_dimensions_are_refused(
    listener: DimseListener, shared_data: Path, good_files: list[Path]
) -> None:
    """65535 x 65535 (4.3 G pixels) is above ``max_image_pixels`` (512 Mi by default): refused
    with 0xC000 before anything is written, whatever the pixel data holds."""
    ds = _giant(shared_data)
    with capture_logs() as logs:
        status, comment = send_with_comment(listener.port, ds)
    assert status == STATUS_CANNOT_UNDERSTAND
    assert comment == "image 65535x65535x1x1 exceeds max_image_pixels 536870912"
    assert instances(listener) == []
    [refused] = [e for e in logs if e["event"] == "instance.refused"]
    assert refused["reason"] == comment
    assert_clean_logs(logs, ds.SOPInstanceUID)
    assert_good_series_goes_through(listener, good_files)


def test_giant_dimensions_under_a_raised_limit_still_need_their_pixel_data(
    tmp_path: Path, shared_data: Path
) -> None:
    with running_listener(tmp_path, max_image_pixels=2**33) as listener:
        status, comment = send_with_comment(listener.port, _giant(shared_data))
    assert status == STATUS_CANNOT_UNDERSTAND
    assert comment == f"pixel data has 32768 bytes, {65535 * 65535 * 2} needed"


# --- unsupported transfer syntax -------------------------------------------------------------


def test_unsupported_transfer_syntax_context_is_rejected_cleanly(
    listener: DimseListener, shared_data: Path, good_files: list[Path]
) -> None:
    unknown_syntax = "1.2.826.0.1.3680043.9.7433.99.1"
    ae = AE(ae_title="SENDER")
    ae.add_requested_context(CTImageStorage, unknown_syntax)
    ae.add_requested_context(Verification)
    with capture_logs() as logs:
        assoc = ae.associate("127.0.0.1", listener.port, ae_title="AINODE")
        assert assoc.is_established
        answers_only_to_caller(assoc)
        try:
            [rejected] = assoc.rejected_contexts
            assert rejected.abstract_syntax == CTImageStorage
            assert rejected.result == 0x04  # transfer syntaxes not supported
            with pytest.raises(ValueError, match="No presentation context"):
                assoc.send_c_store(pydicom.dcmread(good_files[0]))
            assert assoc.send_c_echo().Status == 0x0000
            # Another sender is served meanwhile.
            assert_good_series_goes_through(listener, good_files)
        finally:
            assoc.release()
    [event] = [e for e in logs if e["event"] == "association.context_rejected"]
    assert event["sop_class"] == CTImageStorage
    assert event["transfer_syntax"] == [unknown_syntax]
    assert event["reason"] == "no supported transfer syntax"


# --- all at once -----------------------------------------------------------------------------


def test_bad_senders_do_not_block_a_good_one(
    listener: DimseListener, shared_data: Path, lidc_dir: Path
) -> None:
    """Bad instances from two senders while storescu sends ten good slices at the same time."""
    good = sorted(lidc_dir.glob("*.dcm"))[:10]
    truncated = pydicom.dcmread(shared_data / TEST_FILES / "MR_truncated.dcm")
    giant = _giant(shared_data)

    def bad(ds: pydicom.Dataset) -> list[int]:
        return [c_store(listener.port, ds) for _ in range(5)]

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        sending = pool.submit(storescu, listener.port, good)
        bad_statuses = [pool.submit(bad, truncated), pool.submit(bad, giant)]
        result = sending.result(timeout=120)
        statuses = [s for future in bad_statuses for s in future.result(timeout=120)]
    assert result.returncode == 0, result.stderr
    assert statuses == [STATUS_CANNOT_UNDERSTAND] * 10
    assert stored_sop_uids(listener) == {
        pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in good
    }
