"""TID 1500 Measurement Reports built on the real LIDC chest CT, validated and read back.

Each report is written to a file, checked with dciodvfy (no errors), and read back with
highdicom, which must give the same findings, measurements, units and references.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from dicom_sr import (
    AlgorithmIdentification,
    SegmentSpec,
    build_segmentation,
    dciodvfy_errors,
    derive_uid,
)
from dicom_sr.tid1500 import (
    EllipsoidRegion,
    ImageFinding,
    MeasuredValue,
    RoiFinding,
    SegmentReference,
    build_measurement_report,
)

ALGORITHM = AlgorithmIdentification(name="nodule_det", version="7")
MM = Code("mm", "UCUM", "millimeter")
ML = Code("ml", "UCUM", "milliliter")
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


def _nodule(number: int, long_axis: float, volume: float, mean: float) -> list[MeasuredValue]:
    return [
        MeasuredValue(codes.SCT.LongAxis, long_axis, MM),
        MeasuredValue(codes.SCT.ShortAxis, long_axis * 0.75, MM),
        MeasuredValue(codes.SCT.Volume, volume, ML),
        MeasuredValue(
            codes.DCM.AttenuationCoefficient, mean, codes.UCUM.HounsfieldUnit, codes.SCT.Mean
        ),
        MeasuredValue(codes.DCM.Probability, 0.5 + number / 10, codes.UCUM.NoUnits),
    ]


@pytest.fixture(scope="module")
def lidc(shared_data: Path) -> list[Dataset]:
    folder = shared_data / "fnndsc-data/LIDC-IDRI-0314_CT_chest_every5th_slice"
    images = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.glob("*.dcm"))]
    return sorted(images, key=lambda ds: float(ds.ImagePositionPatient[2]))


@pytest.fixture(scope="module")
def nodule_seg(lidc: list[Dataset]) -> hd.seg.Segmentation:
    """A SEG with two 'nodules' (boxes) on the LIDC grid, segments 1 and 2."""
    label_map = np.zeros((len(lidc), 512, 512), dtype=np.uint8)
    label_map[20:23, 200:215, 120:135] = 1
    label_map[30:32, 300:310, 380:392] = 2
    specs = [
        SegmentSpec(
            label=n,
            label_name=f"Nodule {n}",
            category=codes.SCT.MorphologicallyAbnormalStructure,
            property_type=codes.SCT.Nodule,
            tracking_id=f"nodule-{n}",
            recommended_rgb=(255, 64, 0),
        )
        for n in (1, 2)
    ]
    return build_segmentation(
        source_images=lidc,
        label_map=label_map,
        segments=specs,
        algorithm=ALGORITHM,
        series_instance_uid=derive_uid("job-t", "seg0", "series"),
        sop_instance_uid=derive_uid("job-t", "seg0", "instance"),
        series_number=9001,
        series_description="AI nodule_det v7",
        frame_of_reference_uid=str(lidc[0].FrameOfReferenceUID),
    )


def _report(lidc: list[Dataset], **overrides: Any) -> Dataset:
    arguments: dict[str, Any] = {
        "source_images": lidc,
        "algorithm": ALGORITHM,
        "series_instance_uid": derive_uid("job-t", "sr", "series"),
        "sop_instance_uid": derive_uid("job-t", "sr", "instance"),
        "series_number": 9002,
        "series_description": "AI nodule_det v7 measurements",
    }
    arguments.update(overrides)
    return build_measurement_report(**arguments)


def _saved_and_read(report: Dataset, path: Path) -> hd.sr.ComprehensiveSR:
    report.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    return hd.sr.srread(path)


def test_nodules_with_seg_segments_read_back_the_same(
    lidc: list[Dataset], nodule_seg: hd.seg.Segmentation, tmp_path: Path
) -> None:
    findings = [
        RoiFinding(
            tracking_id=f"nodule-{n}",
            finding_type=codes.SCT.Nodule,
            region=SegmentReference(nodule_seg, n),
            measurements=_nodule(n, 11.5 * n, 0.61 * n, -35.0 * n),
            finding_site=codes.SCT.Lung,
        )
        for n in (1, 2)
    ]
    report = _report(lidc, roi_findings=findings)
    read = _saved_and_read(report, tmp_path / "sr.dcm")

    assert read.SOPClassUID == COMPREHENSIVE_SR
    assert read.StudyInstanceUID == lidc[0].StudyInstanceUID
    assert read.PatientID == lidc[0].PatientID
    assert read.SeriesDescription == "AI nodule_det v7 measurements"
    content = read.content
    assert isinstance(content, hd.sr.MeasurementReport)
    # The algorithm is the observer: a device named after it, model "name version".
    [observer] = content.get_observer_contexts(observer_type=codes.DCM.Device)
    device = observer.observer_identifying_attributes
    assert (device.name, device.model_name) == ("nodule_det", "nodule_det 7")

    groups = content.get_volumetric_roi_measurement_groups()
    assert [g.tracking_identifier for g in groups] == ["nodule-1", "nodule-2"]
    assert len({g.tracking_uid for g in groups}) == 2
    for n, group in zip((1, 2), groups, strict=True):
        assert group.finding_type == codes.SCT.Nodule
        assert group.finding_category == codes.SCT.MorphologicallyAbnormalStructure
        assert [site.value for site in group.finding_sites] == [codes.SCT.Lung]
        assert group.reference_type == codes.DCM.ReferencedSegment
        segment = group.referenced_segment
        assert segment is not None
        assert segment.referenced_sop_instance_uid == nodule_seg.SOPInstanceUID
        assert segment.referenced_segment_numbers == [n]
        source_series = segment.source_series_for_segmentation
        assert source_series is not None
        assert source_series.value == lidc[0].SeriesInstanceUID
        measured = [(m.name, m.value, m.unit, m.derivation) for m in group.get_measurements()]
        expected = [
            (v.name, pytest.approx(v.value), v.unit, v.derivation)
            for v in _nodule(n, 11.5 * n, 0.61 * n, -35.0 * n)
        ]
        assert measured == expected
        algorithm = group[0].ContentSequence  # TID 4019 items inside the group
        names = {
            item.ConceptNameCodeSequence[0].CodeMeaning: getattr(item, "TextValue", None)
            for item in algorithm
        }
        assert names["Algorithm Name"] == "nodule_det"
        assert names["Algorithm Version"] == "7"
    # Evidence: the source series and the SEG.
    evidence = {series for _study, series in read.get_evidence_series()}
    assert evidence == {lidc[0].SeriesInstanceUID, nodule_seg.SeriesInstanceUID}


def test_classification_is_an_image_level_group(lidc: list[Dataset], tmp_path: Path) -> None:
    finding = ImageFinding(
        tracking_id="body-region",
        finding_type=codes.SCT.Chest,
        finding_category=codes.SCT.AnatomicalStructure,
        measurements=[MeasuredValue(codes.DCM.Probability, 0.9731, codes.UCUM.NoUnits)],
        source_images=[lidc[27]],
    )
    read = _saved_and_read(_report(lidc, image_findings=[finding]), tmp_path / "sr.dcm")
    [group] = read.content.get_image_measurement_groups()
    assert group.tracking_identifier == "body-region"
    assert group.finding_type == codes.SCT.Chest
    [probability] = group.get_measurements()
    assert (probability.name, probability.value, probability.unit) == (
        codes.DCM.Probability,
        pytest.approx(0.9731),
        codes.UCUM.NoUnits,
    )
    [source] = group.source_images
    assert source.referenced_sop_instance_uid == lidc[27].SOPInstanceUID


def test_a_finding_without_segmentation_is_an_ellipsoid(
    lidc: list[Dataset], tmp_path: Path
) -> None:
    region = EllipsoidRegion(
        center_mm=(-90.0, 150.0, -520.0),
        semi_axes_mm=((8.0, 0.0, 0.0), (0.0, 6.0, 0.0), (0.0, 0.0, 5.0)),
        frame_of_reference_uid=str(lidc[0].FrameOfReferenceUID),
        source_series_uid=str(lidc[0].SeriesInstanceUID),
    )
    finding = RoiFinding("nodule-1", codes.SCT.Nodule, region, _nodule(1, 16.0, 1.0, 10.0))
    read = _saved_and_read(_report(lidc, roi_findings=[finding]), tmp_path / "sr.dcm")
    assert read.SOPClassUID == COMPREHENSIVE_3D_SR
    [group] = read.content.get_volumetric_roi_measurement_groups()
    assert group.reference_type == codes.DCM.VolumeSurface
    surface = group.roi
    assert isinstance(surface, hd.sr.VolumeSurface)
    points = surface.graphic_data
    assert np.allclose(np.asarray(points).mean(axis=0), (-90.0, 150.0, -520.0))
    assert surface.frame_of_reference_uid == lidc[0].FrameOfReferenceUID


def test_nothing_found_is_said_with_a_qualitative_evaluation(
    lidc: list[Dataset], tmp_path: Path
) -> None:
    none_found = ImageFinding(
        tracking_id="no-nodule",
        finding_type=codes.SCT.Nodule,
        qualitative=[(codes.SCT.Nodule, codes.SCT.Absent)],
    )
    read = _saved_and_read(_report(lidc, image_findings=[none_found]), tmp_path / "sr.dcm")
    assert read.content.get_volumetric_roi_measurement_groups() == []
    [group] = read.content.get_image_measurement_groups()
    [evaluation] = group.get_qualitative_evaluations()
    assert (evaluation.name, evaluation.value) == (codes.SCT.Nodule, codes.SCT.Absent)
    with pytest.raises(ValueError, match="at least one finding"):
        _report(lidc)


def test_same_inputs_same_uids(lidc: list[Dataset], nodule_seg: hd.seg.Segmentation) -> None:
    finding = RoiFinding("nodule-1", codes.SCT.Nodule, SegmentReference(nodule_seg, 1))
    first = _report(lidc, roi_findings=[finding])
    second = _report(lidc, roi_findings=[finding])
    assert first.SOPInstanceUID == second.SOPInstanceUID
    uids = [
        hd.sr.MeasurementReport.from_sequence([r.content[0]])
        .get_volumetric_roi_measurement_groups()[0]
        .tracking_uid
        for r in (first, second)
    ]
    assert uids[0] == uids[1] == derive_uid(first.SOPInstanceUID, "tracking", "nodule-1")


def test_refuses_what_it_cannot_write(lidc: list[Dataset], nodule_seg: hd.seg.Segmentation) -> None:
    finding = RoiFinding("nodule-1", codes.SCT.Nodule, SegmentReference(nodule_seg, 1))
    with pytest.raises(ValueError, match="repeat"):
        _report(lidc, roi_findings=[finding, finding])
    with pytest.raises(ValueError, match="segment 3"):
        _report(
            lidc,
            roi_findings=[RoiFinding("n", codes.SCT.Nodule, SegmentReference(nodule_seg, 3))],
        )
    with pytest.raises(ValueError, match="source series"):
        _report([])
    with pytest.raises(ValueError, match="UCUM"):
        MeasuredValue(codes.SCT.Volume, 1.0, codes.SCT.Lung)
    with pytest.raises(ValueError, match="finite"):
        MeasuredValue(codes.SCT.Volume, float("nan"), ML)
    with pytest.raises(ValueError, match="tracking id"):
        RoiFinding("", codes.SCT.Nodule, SegmentReference(nodule_seg, 1))
