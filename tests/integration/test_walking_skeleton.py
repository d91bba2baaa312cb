"""End to end on real peers: Orthanc pushes the LIDC chest CT to the node, and gets a SEG back."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from dicom_sr import dciodvfy_errors
from node.assembly.volume import load_volume
from tests.peers import (
    Orthanc,
    RunningNode,
    restart_node,
    start_node,
    start_orthanc,
    stop_process,
    storescu,
    wait_for,
)
from training.lung_seg.labels import reference_lung_mask

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    peer = start_orthanc(tmp_path / "orthanc")
    yield peer
    stop_process(peer.process)


@pytest.fixture
def node(tmp_path: Path, orthanc: Orthanc) -> Iterator[RunningNode]:
    running = start_node(
        tmp_path / "node",
        allowed_calling_ae_titles=[orthanc.ae_title],
        destinations=orthanc.as_destination(),
    )
    yield running
    stop_process(running.process)


def test_series_pushed_by_orthanc_comes_back_as_a_valid_lung_seg(
    orthanc: Orthanc, node: RunningNode, lidc_dir: Path, shared_data: Path, tmp_path: Path
) -> None:
    files = sorted(lidc_dir.glob("*.dcm"))
    source_series = orthanc.push_to_node(files, ae_title=node.ae_title, port=node.dicom_port)
    study_id = source_series["ParentStudy"]

    wait_for(
        lambda: bool(orthanc.seg_series(study_id)),
        timeout_s=240,
        interval_s=0.5,
        what=f"a SEG in Orthanc (node log: {node.log_path})",
    )
    [seg_series] = orthanc.seg_series(study_id)
    [seg_instance] = seg_series["Instances"]
    seg_path = tmp_path / "seg.dcm"
    seg_path.write_bytes(orthanc.request("GET", f"/instances/{seg_instance}/file"))

    # A valid object: dciodvfy finds no error.
    assert dciodvfy_errors(seg_path) == []
    seg = hd.seg.segread(seg_path)
    volume = load_volume(files)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert seg.StudyInstanceUID == volume.datasets[0].StudyInstanceUID
    # It shares its Frame of Reference with the first source slice (the LIDC series has a
    # different one on each slice; see docs/architecture.md).
    assert seg.FrameOfReferenceUID == volume.frame_of_reference_uid
    # Every referenced source instance exists, and the series is referenced as a whole.
    source_uids = {str(ds.SOPInstanceUID) for ds in volume.datasets}
    referenced = {
        str(item.ReferencedSOPInstanceUID)
        for series in seg.ReferencedSeriesSequence
        for item in series.ReferencedInstanceSequence
    }
    assert referenced == source_uids
    for uid in referenced:  # ... and the PACS really holds each one
        [found] = orthanc.request("POST", "/tools/lookup", raw=uid.encode())
        assert found["Type"] == "Instance"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == volume.series_instance_uid
    # The model name and version are on the segment's algorithm identification.
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("lung_seg", "1")

    # The mask overlaps the reference lung labels.
    ordered_uids = [str(ds.SOPInstanceUID) for ds in volume.datasets]
    mask = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=ordered_uids, segment_numbers=[1]
    )[..., 0].astype(bool)
    reference = reference_lung_mask(volume.array, volume.spacing)
    dice = 2 * np.logical_and(mask, reference).sum() / (mask.sum() + reference.sum())
    assert dice >= 0.9, f"Dice {dice:.3f}"

    # A series no rule wants (the brain MR, whose headers name an institution and a person) is
    # stored and ignored; the PHI guard (tests/phi_guard.py) checks the node's log for both.
    mr = shared_data / "fnndsc-data/BCH_brain_MR_Siemens_TrioTim/S006_AX_FSE_T2"
    assert storescu(node.dicom_port, sorted(mr.iterdir()), calling=orthanc.ae_title).returncode == 0

    # The job is visible, done, with its delivery confirmed.
    listing = node.cli("jobs", "list")
    assert listing.returncode == 0, listing.stderr
    assert " done " in listing.stdout
    shown = node.cli("jobs", "show", "1")
    assert "pacs: confirmed" in shown.stdout
    # Nothing in the node's log names the patient.
    patient = pydicom.dcmread(files[0], stop_before_pixels=True)
    log_text = node.log_path.read_text()
    assert "series.routed" in log_text
    identifiers = [str(patient.PatientID), str(patient.PatientName), str(patient.StudyInstanceUID)]
    identifiers += sorted(source_uids)
    assert [i for i in identifiers if i and i in log_text] == []


def _job_states(node: RunningNode) -> list[str]:
    import sqlite3

    index = node.data_dir / "index.sqlite"
    if not index.exists():
        return []
    with sqlite3.connect(index, timeout=5) as connection:
        return [row[0] for row in connection.execute("SELECT state FROM jobs")]


def test_job_killed_mid_inference_finishes_once_after_restart(
    orthanc: Orthanc, node: RunningNode, lidc_dir: Path
) -> None:
    files = sorted(lidc_dir.glob("*.dcm"))
    result = storescu(node.dicom_port, files, calling=orthanc.ae_title)
    assert result.returncode == 0, result.stderr
    # Kill -9 while the job runs (it takes seconds: loading the volume and inferring).
    wait_for(
        lambda: _job_states(node) in (["running"], ["exporting"], ["done"]),
        timeout_s=60,
        interval_s=0.02,
        what="the job to start",
    )
    node.process.send_signal(signal.SIGKILL)
    node.process.wait(10)
    killed_in = _job_states(node)

    # Every acknowledged instance is on disk, readable and indexed.
    import sqlite3

    with sqlite3.connect(node.data_dir / "index.sqlite") as connection:
        paths = [row[0] for row in connection.execute("SELECT path FROM instances")]
    assert len(paths) == len(files)
    for path in paths:
        pydicom.dcmread(node.data_dir / "spool" / path, stop_before_pixels=True)

    restarted = restart_node(node)
    try:
        wait_for(
            lambda: _job_states(restarted) == ["done"],
            timeout_s=240,
            interval_s=0.5,
            what=f"the job to finish after restart (killed in {killed_in})",
        )
        study = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
        [study_id] = orthanc.request("POST", "/tools/lookup", raw=str(study).encode())
        segs = orthanc.seg_series(study_id["ID"])
        assert len(segs) == 1
        assert len(segs[0]["Instances"]) == 1
        shown = restarted.cli("jobs", "show", "1")
        assert shown.returncode == 0, shown.stderr
        if killed_in == ["running"]:
            assert "resumed after a restart" in shown.stdout
    finally:
        stop_process(restarted.process)
