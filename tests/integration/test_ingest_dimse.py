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


# --- several receiving processes (``receivers``) ----------------------------------------------


def _indexed(data_dir: Path) -> set[str]:
    import sqlite3

    with sqlite3.connect(data_dir / "index.sqlite", timeout=10) as connection:
        return {row[0] for row in connection.execute("SELECT sop_instance_uid FROM instances")}


@pytest.mark.slow
def test_receiving_processes_store_and_share_the_association_limit(
    tmp_path: Path, lidc_dir: Path
) -> None:
    """``receivers: 2``: four storescu associations at once are all stored (by whichever process
    took each), and ``max_associations`` holds for the node, not per process."""
    import concurrent.futures

    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    from tests.peers import start_node, stop_process

    rules = tmp_path / "rules.yaml"
    rules.write_text("rules: []\n")
    files = sorted(lidc_dir.glob("*.dcm"))[:12]
    node = start_node(tmp_path / "four", rules_file=str(rules), receivers=2)
    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            sent = list(pool.map(lambda k: storescu(node.dicom_port, files[k::4]), range(4)))
        assert all(result.returncode == 0 for result in sent), [r.stderr for r in sent]
    finally:
        stop_process(node.process)
    assert node.process.returncode == 0
    expected = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in files}
    assert _indexed(node.data_dir) == expected
    log = node.log_path.read_text()
    assert log.count('"dimse.listening"') == 1

    limited = start_node(
        tmp_path / "limited", rules_file=str(rules), receivers=2, max_associations=1
    )
    try:
        holders = []
        for _ in range(2):  # the second lands on either process: refused all the same
            ae = AE(ae_title="HOLDER")
            ae.add_requested_context(Verification)
            holders.append(ae.associate("127.0.0.1", limited.dicom_port, ae_title="AINODE"))
        assert holders[0].is_established
        assert holders[1].is_rejected
        assert holders[1].acceptor.primitive.diagnostic == 2  # local limit exceeded
        holders[0].release()
        echo = subprocess.run(
            ["echoscu", "-aec", "AINODE", "127.0.0.1", str(limited.dicom_port)],
            capture_output=True,
            text=True,
            timeout=30,
            env=nodelay_env(),
            check=False,
        )
        assert echo.returncode == 0, echo.stderr
    finally:
        stop_process(limited.process)


@pytest.mark.slow
def test_a_receiving_process_killed_at_a_crash_point_takes_the_node_down(
    tmp_path: Path, lidc_dir: Path
) -> None:
    """A crash point fires in the receiving process that stores the instance; the node dies by
    the same SIGKILL (as one process would), its receivers with it, and what storescu saw
    acknowledged is indexed. A restarted node serves the port again."""
    import signal

    from node.faults import CRASH_ENV
    from tests.peers import launch_node, stop_process, write_node_config

    rules = tmp_path / "rules.yaml"
    rules.write_text("rules: []\n")
    (tmp_path / "node").mkdir()
    config_path, config = write_node_config(tmp_path / "node", rules_file=str(rules), receivers=2)
    log_path = tmp_path / "node" / "node.log"
    node = launch_node(config_path, config, log_path, extra_env={CRASH_ENV: "ingest.after_index:3"})
    files = sorted(lidc_dir.glob("*.dcm"))[:6]
    sent = storescu(node.dicom_port, files)
    assert sent.returncode != 0
    node.process.wait(30)
    assert node.process.returncode == -signal.SIGKILL
    assert '"ingest.receiver_died"' in log_path.read_text()
    indexed = _indexed(Path(config["data_dir"]))
    first_two = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in files[:2]}
    assert first_two <= indexed  # acknowledged before the kill
    assert len(indexed) == 3  # the third was indexed, then the kill: never acknowledged

    restarted = launch_node(config_path, config, log_path)
    try:
        assert storescu(restarted.dicom_port, files).returncode == 0
    finally:
        stop_process(restarted.process)
    assert len(_indexed(Path(config["data_dir"]))) == 6
