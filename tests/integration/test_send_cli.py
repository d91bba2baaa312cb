"""``pacs-ai-node send`` against a real Orthanc, by DIMSE and by DICOMweb."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from typer.testing import CliRunner

from node.admin.cli import app
from tests.peers import (
    Orthanc,
    free_port,
    running_listener,
    start_orthanc,
    stop_process,
    write_node_config,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """One Orthanc with DICOMweb for the module, emptied before each test."""
    peer = start_orthanc(tmp_path_factory.mktemp("orthanc"), dicomweb=True)
    yield peer
    stop_process(peer.process)


@pytest.fixture
def pacs(orthanc: Orthanc) -> Orthanc:
    for patient in orthanc.request("GET", "/patients"):
        orthanc.request("DELETE", f"/patients/{patient}")
    return orthanc


@pytest.fixture
def config(tmp_path: Path, pacs: Orthanc) -> Path:
    """A configuration naming Orthanc twice: ``dimse`` (C-STORE) and ``web`` (STOW-RS)."""
    path, _ = write_node_config(
        tmp_path,
        destinations={
            "dimse": {"host": "127.0.0.1", "port": pacs.dicom_port, "ae_title": pacs.ae_title},
            "web": {"kind": "dicomweb", "url": f"{pacs.url}/dicom-web"},
        },
    )
    return path


def send(*args: str) -> tuple[int, str, str]:
    """Run ``pacs-ai-node send ARGS``; return the exit code, stdout and stderr."""
    result = CliRunner().invoke(app, ["send", *args])
    return result.exit_code, result.stdout, result.stderr


def sop_instance_uids(orthanc: Orthanc) -> set[str]:
    instances = orthanc.request("GET", "/instances?expand")
    return {item["MainDicomTags"]["SOPInstanceUID"] for item in instances}


def uids_of(paths: list[Path]) -> set[str]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}


@pytest.mark.parametrize("destination", ["dimse", "web"])
def test_the_lidc_series_reaches_orthanc(
    destination: str, config: Path, pacs: Orthanc, lidc_dir: Path
) -> None:
    files = sorted(lidc_dir.glob("*.dcm"))
    code, out, err = send(
        str(lidc_dir), "--to", destination, "--config", str(config), "--batch-size", "16"
    )
    assert code == 0, err
    # The folder also holds the upstream README.
    assert f"{destination}: sent {len(files)}, failed 0, skipped 1 (1 not DICOM)" in out
    assert sop_instance_uids(pacs) == uids_of(files)


def test_sending_again_keeps_one_copy(config: Path, pacs: Orthanc, shared_data: Path) -> None:
    folder = shared_data / "dcmqi" / "ct-3slice_with_SEG"
    for destination in ("web", "dimse", "web"):
        code, out, err = send(str(folder), "--to", destination, "--config", str(config))
        assert code == 0, err
        assert "sent 5, failed 0" in out
    assert pacs.request("GET", "/statistics")["CountInstances"] == 5


def test_unknown_destination_names_the_known_ones(config: Path, lidc_dir: Path) -> None:
    code, out, err = send(str(lidc_dir), "--to", "nowhere", "--config", str(config))
    assert code == 1
    assert "no destination 'nowhere' (known: dimse, web)" in err
    assert out == ""


def test_files_that_are_not_dicom_are_skipped_and_counted(
    config: Path, pacs: Orthanc, shared_data: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "mixed"
    (folder / "sub").mkdir(parents=True)
    ct = sorted((shared_data / "dcmqi" / "ct-3slice_with_SEG" / "CT").glob("*.dcm"))
    for path in ct:
        (folder / "sub" / path.name).symlink_to(path)
    pydicom_files = shared_data / "pydicom-3.0.2" / "test_files"
    (folder / "zipMR.gz").symlink_to(pydicom_files / "zipMR.gz")
    (folder / "DICOMDIR").symlink_to(pydicom_files / "dicomdirtests" / "DICOMDIR")
    (folder / "notes.txt").write_text("not an image\n")
    code, out, err = send(str(folder), "--to", "web", "--config", str(config))
    assert code == 0, err
    assert "web: sent 3, failed 0, skipped 3 (2 not DICOM, 1 DICOMDIR)" in out
    assert sop_instance_uids(pacs) == uids_of(ct)


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_RLE.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_bigendian.dcm",
        "SC_rgb_jpeg_dcmtk.dcm",
    ],
)
def test_encoded_files_go_by_dimse_in_their_own_transfer_syntax(
    name: str, config: Path, pacs: Orthanc, shared_data: Path
) -> None:
    path = shared_data / "pydicom-3.0.2" / "test_files" / name
    code, out, err = send(str(path), "--to", "dimse", "--config", str(config))
    assert code == 0, err
    assert "sent 1, failed 0" in out
    [instance] = pacs.request("GET", "/instances")
    stored = pacs.request("GET", f"/instances/{instance}/metadata/TransferSyntax")
    syntax = stored.decode() if isinstance(stored, bytes) else stored
    assert syntax == pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID


def test_a_refused_file_fails_alone_and_the_exit_code_says_so(
    tmp_path: Path, shared_data: Path
) -> None:
    small = shared_data / "pydicom-3.0.2" / "test_files" / "CT_small.dcm"  # 128 x 128
    large = sorted((shared_data / "dcmqi" / "ct-3slice_with_SEG" / "CT").glob("*.dcm"))  # 512
    folder = tmp_path / "files"
    folder.mkdir()
    for path in [small, *large]:
        (folder / path.name).symlink_to(path)
    # The node's own listener refuses pixel data over its limit (0xC000): only CT_small fits.
    (tmp_path / "peer").mkdir()
    with running_listener(tmp_path / "peer", ae_title="PICKY", max_image_pixels=128 * 128) as peer:
        config, _ = write_node_config(
            tmp_path,
            destinations={"picky": {"host": "127.0.0.1", "port": peer.port, "ae_title": "PICKY"}},
        )
        code, out, err = send(str(folder), "--to", "picky", "--config", str(config))
    assert code == 1
    assert "picky: sent 1, failed 3, skipped 0" in out
    for path in large:
        assert f"failed: {folder / path.name}: " in err
        assert "0xC000" in err
    assert f"failed: {folder / small.name}" not in err


def test_an_unreachable_destination_stops_the_send(tmp_path: Path, lidc_dir: Path) -> None:
    config, _ = write_node_config(
        tmp_path,
        destinations={"gone": {"kind": "dicomweb", "url": f"http://127.0.0.1:{free_port()}"}},
    )
    code, out, err = send(str(lidc_dir), "--to", "gone", "--config", str(config), "--attempts", "1")
    assert code == 1
    everything = sum(1 for p in lidc_dir.iterdir() if p.is_file())
    assert f"gone: sent 0, failed 0, skipped 0, not attempted {everything}" in out
    assert "stopped, 'gone' cannot be reached" in err


def test_a_folder_without_dicom_is_an_error(config: Path, tmp_path: Path) -> None:
    (tmp_path / "empty" / "deeper").mkdir(parents=True)
    (tmp_path / "empty" / "deeper" / "readme.txt").write_text("nothing here\n")
    code, out, err = send(str(tmp_path / "empty"), "--to", "web", "--config", str(config))
    assert code == 1
    assert "skipped 1 (1 not DICOM)" in out
    assert "no DICOM files under" in err
