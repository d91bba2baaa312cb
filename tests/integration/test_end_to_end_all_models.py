"""End to end on real peers with every shipped model: Orthanc pushes the LIDC chest CT to the
node (``deploy/rules-all-models.yaml``) and gets back, in the same study, the lung SEG, the
nodule SEG, two TID 1500 Measurement Reports (nodules; body region) and two Parametric Maps
(the explanations), each dciodvfy-clean, each referencing the source series and naming the
model and version that made it."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pytest
from pydicom import Dataset

from dicom_sr import dciodvfy_errors
from node.assembly.volume import load_volume
from tests.peers import (
    REPO_ROOT,
    Orthanc,
    RunningNode,
    start_node,
    start_orthanc,
    stop_process,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEG = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
PARAMETRIC_MAP = "1.2.840.10008.5.1.4.1.1.30"


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
        rules_file=str(REPO_ROOT / "deploy" / "rules-all-models.yaml"),
    )
    yield running
    stop_process(running.process)


def _job_states(node: RunningNode) -> list[str]:
    index = node.data_dir / "index.sqlite"
    if not index.exists():
        return []
    with sqlite3.connect(index, timeout=5) as connection:
        return [row[0] for row in connection.execute("SELECT state FROM jobs ORDER BY id")]


def _results(orthanc: Orthanc, study_id: str, source_series_id: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = orthanc.request("GET", f"/studies/{study_id}/series")
    return [s for s in found if s["ID"] != source_series_id]


def _algorithm(dataset: Dataset) -> tuple[str, str]:
    """The (name, version) an object names as its maker."""
    if dataset.SOPClassUID == SEG:
        item = dataset.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
        return str(item.AlgorithmName), str(item.AlgorithmVersion)
    if dataset.SOPClassUID == COMPREHENSIVE_SR:
        report = hd.sr.ComprehensiveSR.from_dataset(dataset).content
        [observer] = report.get_observer_contexts()
        name = observer.observer_identifying_attributes.name
        model_name = observer.observer_identifying_attributes.model_name  # "name version"
        return str(name), str(model_name).split()[-1]
    name, _, rest = str(dataset.ContentDescription).partition("@")  # "name@version: ..."
    return name, rest.split(":")[0]


def _referenced_series(dataset: Dataset) -> set[str]:
    """Series an object references: SEG and map by their source images, SR by its evidence."""
    if dataset.SOPClassUID == COMPREHENSIVE_SR:
        return {
            str(series.SeriesInstanceUID)
            for study in dataset.CurrentRequestedProcedureEvidenceSequence
            for series in study.ReferencedSeriesSequence
        }
    return {str(s.SeriesInstanceUID) for s in dataset.ReferencedSeriesSequence}


def test_chest_ct_yields_seg_report_and_map_for_every_model(
    orthanc: Orthanc, node: RunningNode, lidc_dir: Path, tmp_path: Path
) -> None:
    files = sorted(lidc_dir.glob("*.dcm"))
    source = orthanc.push_to_node(files, ae_title=node.ae_title, port=node.dicom_port)
    wait_for(
        lambda: _job_states(node) == ["done", "done", "done"],
        timeout_s=420,
        interval_s=1.0,
        what=f"three jobs done (node log: {node.log_path})",
    )
    results = _results(orthanc, source["ParentStudy"], source["ID"])
    datasets = []
    for series in results:
        [instance] = series["Instances"]
        path = tmp_path / f"{instance}.dcm"
        path.write_bytes(orthanc.request("GET", f"/instances/{instance}/file"))
        assert dciodvfy_errors(path) == [], series["MainDicomTags"].get("SeriesDescription")
        datasets.append(pydicom.dcmread(path))

    made = sorted((d.SOPClassUID, _algorithm(d)) for d in datasets)
    assert made == sorted(
        [
            (SEG, ("lung_seg", "1")),
            (SEG, ("nodule_det", "1")),
            (COMPREHENSIVE_SR, ("nodule_det", "1")),
            (PARAMETRIC_MAP, ("nodule_det", "1")),
            (COMPREHENSIVE_SR, ("ct_region", "1")),
            (PARAMETRIC_MAP, ("ct_region", "1")),
        ]
    )
    volume = load_volume(files)
    for dataset in datasets:
        assert dataset.StudyInstanceUID == volume.datasets[0].StudyInstanceUID
        assert volume.series_instance_uid in _referenced_series(dataset), dataset.SOPClassUID
        if "FrameOfReferenceUID" in dataset:
            assert dataset.FrameOfReferenceUID == volume.frame_of_reference_uid

    # The nodule report finds the real nodule, references its segment in the nodule SEG, and
    # says the risk score is uncalibrated.
    [nodule_seg] = [
        d for d in datasets if d.SOPClassUID == SEG and _algorithm(d)[0] == "nodule_det"
    ]
    [nodule_sr] = [
        d
        for d in datasets
        if d.SOPClassUID == COMPREHENSIVE_SR and _algorithm(d)[0] == "nodule_det"
    ]
    groups = hd.sr.ComprehensiveSR.from_dataset(
        nodule_sr
    ).content.get_volumetric_roi_measurement_groups()
    assert groups
    for group in groups:
        assert group.referenced_segment.referenced_sop_instance_uid == nodule_seg.SOPInstanceUID
        names = {m.name.meaning for m in group.get_measurements()}
        assert {"Long axis", "Short axis", "Volume", "Malignancy risk score, uncalibrated"} <= names
    # The region report says chest.
    [region_sr] = [
        d for d in datasets if d.SOPClassUID == COMPREHENSIVE_SR and _algorithm(d)[0] == "ct_region"
    ]
    [region] = hd.sr.ComprehensiveSR.from_dataset(region_sr).content.get_image_measurement_groups()
    assert region.finding_type.meaning == "Chest"

    listing = node.cli("jobs", "list")
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.count(" done ") == 3
