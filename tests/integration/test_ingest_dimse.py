"""The DICOM listener against real dcmtk peers: storescu, echoscu."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from node.ingest.dimse import STATUS_CANNOT_UNDERSTAND, DimseListener
from node.store.models import Association, Instance, Series
from tests.peers import c_store, nodelay_env, running_listener, storescu

pytestmark = pytest.mark.integration


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[DimseListener]:
    with running_listener(tmp_path) as server:
        yield server


def test_storescu_series_is_on_disk_and_indexed(listener: DimseListener, lidc_dir: Path) -> None:
    files = sorted(lidc_dir.glob("*.dcm"))
    result = storescu(listener.port, files)
    assert result.returncode == 0, result.stderr
    with listener.store.db.session() as session:
        instances = session.scalars(select(Instance)).all()
        series = session.scalars(select(Series)).one()
        associations = session.scalars(select(Association)).all()
        assert len(instances) == len(files) == series.instance_count == 55
        assert series.attributes["Modality"] == "CT"
        assert all(a.closed_at is not None for a in associations)
        by_uid = {i.sop_instance_uid: i for i in instances}
    for path in files:
        source = pydicom.dcmread(path, stop_before_pixels=True)
        stored = listener.store.spool.absolute(by_uid[source.SOPInstanceUID].path)
        # Stored as received: the dataset bytes after the file meta are the sender's.
        assert pydicom.dcmread(stored).PixelData == pydicom.dcmread(path).PixelData
        assert stored.stat().st_size > 0


@pytest.mark.parametrize(
    ("relative", "propose"),
    [
        ("pydicom-3.0.2/test_files/MR_small_RLE.dcm", "-xr"),
        ("pydicom-3.0.2/test_files/MR_small_jpeg_ls_lossless.dcm", "-xt"),
        ("pydicom-3.0.2/test_files/MR_small_jp2klossless.dcm", "-xv"),
        ("pydicom-3.0.2/test_files/JPGExtended.dcm", "-xx"),
        ("pydicom-3.0.2/test_files/SC_rgb_jpeg_dcmtk.dcm", "-xy"),
        ("pydicom-data-1.0.0/data/JPEG-LL.dcm", "-xs"),
        ("pydicom-3.0.2/test_files/image_dfl.dcm", "-xd"),
        ("pydicom-3.0.2/test_files/MR_small_bigendian.dcm", "-xb"),
    ],
)
def test_compressed_transfer_syntaxes_are_kept_as_sent(
    listener: DimseListener, shared_data: Path, relative: str, propose: str
) -> None:
    path = shared_data / relative
    sent = pydicom.dcmread(path)
    # storescu proposes the file's own (compressed) transfer syntax, so it travels as stored.
    result = storescu(listener.port, [path], extra=(propose,))
    assert result.returncode == 0, result.stderr
    with listener.store.db.session() as session:
        instance = session.scalars(select(Instance)).one()
    stored = pydicom.dcmread(listener.store.spool.absolute(instance.path))
    assert str(stored.file_meta.TransferSyntaxUID) == str(sent.file_meta.TransferSyntaxUID)
    assert instance.transfer_syntax_uid == str(sent.file_meta.TransferSyntaxUID)
    assert stored.PixelData == sent.PixelData


def test_empty_uids_are_refused_with_cannot_understand(
    listener: DimseListener, shared_data: Path
) -> None:
    # The TotalSegmentator CT has empty SOP/Series/Study UIDs; only the file meta has some.
    # storescu cannot send it at all, so a pynetdicom SCU sends it under the meta's SOP UIDs.
    path = sorted(
        (shared_data / "totalsegmentator/example_ct_dicom_CT_Body_abdomen_J2K").iterdir()
    )[0]
    ds = pydicom.dcmread(path)
    assert ds.SeriesInstanceUID == ""
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    assert c_store(listener.port, ds) == STATUS_CANNOT_UNDERSTAND
    with listener.store.db.session() as session:
        assert session.scalars(select(Instance)).all() == []
    assert not list((listener.store.spool.root / "instances").rglob("*.dcm"))


def test_listener_survives_garbage_and_keeps_serving(
    listener: DimseListener, lidc_dir: Path
) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", listener.port)) as sock:
        sock.sendall(b"\x01\x00 this is not an A-ASSOCIATE-RQ" * 10)
    echo = subprocess.run(
        ["echoscu", "-aec", "AINODE", "127.0.0.1", str(listener.port)],
        capture_output=True,
        text=True,
        timeout=30,
        env=nodelay_env(),
        check=False,
    )
    assert echo.returncode == 0, echo.stderr
    assert storescu(listener.port, sorted(lidc_dir.glob("*.dcm"))[:2]).returncode == 0


def test_unknown_calling_ae_is_rejected_when_allow_list_set(tmp_path: Path) -> None:
    with running_listener(tmp_path, allowed=["ORTHANC"]) as server:

        def echo(calling: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["echoscu", "-aet", calling, "-aec", "AINODE", "127.0.0.1", str(server.port)],
                capture_output=True,
                text=True,
                timeout=30,
                env=nodelay_env(),
                check=False,
            )

        refused = echo("INTRUDER")
        assert refused.returncode != 0
        assert "rejected" in (refused.stdout + refused.stderr).lower()
        assert echo("ORTHANC").returncode == 0


def test_unwritable_spool_answers_out_of_resources_and_keeps_serving(
    listener: DimseListener, lidc_dir: Path
) -> None:
    import shutil

    from node.ingest.dimse import STATUS_OUT_OF_RESOURCES

    instances = listener.store.spool.root / "instances"
    shutil.rmtree(instances)
    instances.write_bytes(b"")  # a file where the folder should be: every write fails
    ds = pydicom.dcmread(sorted(lidc_dir.glob("*.dcm"))[0])
    assert c_store(listener.port, ds) == STATUS_OUT_OF_RESOURCES
    with listener.store.db.session() as session:
        assert session.scalars(select(Instance)).all() == []
    instances.unlink()
    instances.mkdir()
    assert storescu(listener.port, sorted(lidc_dir.glob("*.dcm"))[:1]).returncode == 0
