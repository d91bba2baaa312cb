"""A job's result objects: SEG, TID 1500 report and Parametric Map, written together.

Findings made by hand on the real LIDC chest CT go through ``write_results`` into a spool;
every object must be dciodvfy-clean, reference the source series, name the model and version,
and carry UIDs that depend on the job and the output only.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from dicom_sr import dciodvfy_errors
from node.assembly.volume import Volume
from node.jobs.results import write_results
from node.pipelines.findings import (
    Classification,
    CodedConcept,
    Detection,
    Findings,
    HeatMap,
    LabelMap,
)
from node.pipelines.measurements import measure_region
from node.pipelines.nodule_det import LUNG, NODULE, SALIENCY, _segment
from node.store.spool import Spool
from tests.unit.pipelines.conftest import ellipsoid_mask

SEG = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
PARAMETRIC_MAP = "1.2.840.10008.5.1.4.1.1.30"


def _findings(volume: Volume) -> Findings:
    """Two 'nodules' (spheres in the right and left lung), measured, and one heat map."""
    labels = np.zeros(volume.array.shape, dtype=np.uint8)
    detections = []
    for number, center in enumerate(((-90.0, 150.0, -520.0), (80.0, 170.0, -505.0)), start=1):
        mask = ellipsoid_mask(volume, center, (6.0, 6.0, 6.0))
        labels[mask] = number
        measured = measure_region(mask, volume)
        detections.append(
            Detection(
                tracking_id=f"nodule-{number}",
                finding_type=NODULE,
                finding_site=LUNG,
                center_mm=measured.center_mm,
                extent_mm=measured.extent_mm,
                probability=0.9,
                measurements=measured.as_measurements(),
                label_map_index=0,
                label=number,
            )
        )
    heat = np.zeros((volume.array.shape[0], 256, 256), dtype=np.float32)
    heat[30, 100:120, 60:80] = 0.8
    return Findings(
        model_name="nodule_det",
        model_version="1",
        label_maps=(LabelMap(labels, (_segment(1), _segment(2))),),
        detections=tuple(detections),
        heat_maps=(
            HeatMap(heat, "OCCLUSION", "Occlusion sensitivity of nodule-1", SALIENCY, "nodule-1"),
        ),
    )


@pytest.fixture(scope="module")
def findings(lidc_volume: Volume) -> Findings:
    return _findings(lidc_volume)


def test_seg_report_and_map(lidc_volume: Volume, findings: Findings, tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    written = write_results(
        findings, lidc_volume, job_uid="job-1", spool=spool, series_number=900, explain=True
    )
    paths = [spool.absolute(r.path) for r in written]
    assert [p.name.split(".")[0].rsplit("-", 1)[-1] for p in paths] == ["seg0", "sr", "pm0"]
    seg, sr, pm = (pydicom.dcmread(p) for p in paths)
    assert [seg.SOPClassUID, sr.SOPClassUID, pm.SOPClassUID] == [
        SEG,
        COMPREHENSIVE_SR,
        PARAMETRIC_MAP,
    ]
    assert [int(d.SeriesNumber) for d in (seg, sr, pm)] == [900, 901, 902]
    for path in paths:
        assert dciodvfy_errors(path) == [], path.name
    for dataset in (seg, sr, pm):
        assert dataset.StudyInstanceUID == lidc_volume.datasets[0].StudyInstanceUID
        assert "nodule_det v1" in dataset.SeriesDescription
    # The report's groups reference the SEG's segments 1 and 2 and the source series.
    report = hd.sr.srread(paths[1]).content
    groups = report.get_volumetric_roi_measurement_groups()
    assert [g.tracking_identifier for g in groups] == ["nodule-1", "nodule-2"]
    for number, group in enumerate(groups, start=1):
        segment = group.referenced_segment
        assert segment.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert segment.referenced_segment_numbers == [number]
        assert segment.source_series_for_segmentation.value == lidc_volume.series_instance_uid
        volume_ml = next(m for m in group.get_measurements() if m.name == codes.SCT.Volume)
        assert volume_ml.value == pytest.approx(
            findings.detections[number - 1].measurements[2].value
        )
    assert pm.ContentDescription.startswith("nodule_det@1")
    assert pm.FrameOfReferenceUID == seg.FrameOfReferenceUID == lidc_volume.frame_of_reference_uid


def test_no_map_unless_asked_and_uids_per_job(
    lidc_volume: Volume, findings: Findings, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool")
    first = write_results(findings, lidc_volume, job_uid="job-1", spool=spool, series_number=9)
    again = write_results(findings, lidc_volume, job_uid="job-1", spool=spool, series_number=9)
    other = write_results(findings, lidc_volume, job_uid="job-2", spool=spool, series_number=9)
    shadow = write_results(
        findings,
        lidc_volume,
        job_uid="job-1",
        spool=spool,
        series_number=9,
        output_prefix="shadow-",
    )
    assert len(first) == 2  # SEG and report: no map without explain
    assert [r.sop_instance_uid for r in first] == [r.sop_instance_uid for r in again]
    assert [r.path for r in first] == [r.path for r in again]
    uids = {r.sop_instance_uid for r in (*first, *other, *shadow)}
    assert len(uids) == 6


def test_nothing_found_and_classification(lidc_volume: Volume, tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    empty = Findings(model_name="nodule_det", model_version="1", absent=(NODULE,))
    [report] = write_results(empty, lidc_volume, job_uid="j", spool=spool, series_number=1)
    content = hd.sr.srread(spool.absolute(report.path)).content
    [group] = content.get_image_measurement_groups()
    [evaluation] = group.get_qualitative_evaluations()
    assert (evaluation.name.value, evaluation.value.meaning) == (NODULE.value, "Absent")

    chest = CodedConcept("816094009", "SCT", "Chest")
    classified = Findings(
        model_name="ct_region",
        model_version="1",
        classifications=(Classification("body-region", chest, 0.93),),
    )
    [report] = write_results(classified, lidc_volume, job_uid="k", spool=spool, series_number=1)
    assert dciodvfy_errors(spool.absolute(report.path)) == []
    content = hd.sr.srread(spool.absolute(report.path)).content
    [group] = content.get_image_measurement_groups()
    assert group.finding_type.value == chest.value
    [probability] = group.get_measurements()
    assert probability.value == pytest.approx(0.93)


def test_a_detection_must_reference_a_segment(
    lidc_volume: Volume, findings: Findings, tmp_path: Path
) -> None:
    broken = dataclasses.replace(
        findings, detections=(dataclasses.replace(findings.detections[0], label=None),)
    )
    with pytest.raises(ValueError, match="no segmentation"):
        write_results(broken, lidc_volume, job_uid="j", spool=Spool(tmp_path), series_number=1)
