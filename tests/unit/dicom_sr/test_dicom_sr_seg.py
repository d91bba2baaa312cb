"""Tests of dicom_sr.seg: SEGs built from real CT series, written, read back and validated."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from dicom_sr import (
    AlgorithmIdentification,
    SegmentSpec,
    build_segmentation,
    dciodvfy_errors,
    derive_uid,
    software_versions,
)

ALGORITHM = AlgorithmIdentification(name="threshold-demo", version="1.2.3")
BONE = SegmentSpec(
    label=1,
    label_name="Bone",
    category=codes.SCT.Tissue,
    property_type=codes.SCT.Bone,
    tracking_id="bone-1",
    recommended_rgb=(241, 214, 145),
)
LUNG = SegmentSpec(
    label=1,
    label_name="Lung",
    category=codes.SCT.Organ,
    property_type=codes.SCT.Lung,
    tracking_id="lung-1",
    recommended_rgb=(197, 165, 145),
)
SERIES_UID = derive_uid("job-test", "seg", "series")
INSTANCE_UID = derive_uid("job-test", "seg", "instance")


def build(
    images: list[pydicom.Dataset], label_map: np.ndarray, **overrides: Any
) -> hd.seg.Segmentation:
    arguments: dict[str, Any] = {
        "source_images": images,
        "label_map": label_map,
        "segments": [BONE],
        "algorithm": ALGORITHM,
        "series_instance_uid": SERIES_UID,
        "sop_instance_uid": INSTANCE_UID,
        "series_number": 9001,
        "series_description": "AI threshold demo",
    }
    arguments.update(overrides)
    return build_segmentation(**arguments)


def write_and_read(seg: hd.seg.Segmentation, folder: Path) -> hd.seg.Segmentation:
    path = folder / "seg.dcm"
    seg.save_as(path)
    assert dciodvfy_errors(path) == []
    return hd.seg.segread(path)


def decoded_label_map(seg: hd.seg.Segmentation, images: list[pydicom.Dataset]) -> np.ndarray:
    return seg.get_pixels_by_source_instance(
        [ds.SOPInstanceUID for ds in images],
        combine_segments=True,
        assert_missing_frames_are_empty=False,
    )


def referenced_instance_uids(seg: pydicom.Dataset) -> set[str]:
    per_frame = {
        source.ReferencedSOPInstanceUID
        for frame in seg.PerFrameFunctionalGroupsSequence
        for derivation in frame.DerivationImageSequence
        for source in derivation.SourceImageSequence
    }
    per_series = {
        instance.ReferencedSOPInstanceUID
        for series in seg.ReferencedSeriesSequence
        for instance in series.ReferencedInstanceSequence
    }
    return per_frame | per_series


def assert_frames_match_their_sources(
    seg: hd.seg.Segmentation, images: list[pydicom.Dataset]
) -> None:
    """Each frame references exactly one source image and lies at that image's position.

    highdicom orders the frames along its own dimension organisation, so frames are
    matched to sources by reference, not by index.
    """
    by_uid = {ds.SOPInstanceUID: ds for ds in images}
    seen = []
    for frame in seg.PerFrameFunctionalGroupsSequence:
        (derivation,) = frame.DerivationImageSequence
        (source,) = derivation.SourceImageSequence
        image = by_uid[source.ReferencedSOPInstanceUID]
        position = frame.PlanePositionSequence[0].ImagePositionPatient
        assert np.allclose(position, image.ImagePositionPatient)
        seen.append(source.ReferencedSOPInstanceUID)
    assert sorted(seen) == sorted(by_uid)


# The 3-slice dcmqi CT -------------------------------------------------------------------


def test_ct3_seg_is_valid_and_references_its_sources(
    ct3_images: list[pydicom.Dataset], ct3_mask: np.ndarray, tmp_path: Path
) -> None:
    seg = write_and_read(build(ct3_images, ct3_mask), tmp_path)

    source_uids = {ds.SOPInstanceUID for ds in ct3_images}
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
    assert seg.SegmentationType == "BINARY"
    assert seg.NumberOfFrames == len(ct3_images)
    assert referenced_instance_uids(seg) == source_uids
    (series,) = seg.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == ct3_images[0].SeriesInstanceUID
    assert seg.FrameOfReferenceUID == ct3_images[0].FrameOfReferenceUID
    assert seg.StudyInstanceUID == ct3_images[0].StudyInstanceUID
    assert_frames_match_their_sources(seg, ct3_images)


def test_ct3_segment_carries_algorithm_colour_and_tracking(
    ct3_images: list[pydicom.Dataset], ct3_mask: np.ndarray, tmp_path: Path
) -> None:
    seg = write_and_read(build(ct3_images, ct3_mask), tmp_path)

    (segment,) = seg.SegmentSequence
    (algorithm,) = segment.SegmentationAlgorithmIdentificationSequence
    assert segment.SegmentAlgorithmType == "AUTOMATIC"
    assert algorithm.AlgorithmName == "threshold-demo"
    assert algorithm.AlgorithmVersion == "1.2.3"
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"
    assert segment.SegmentLabel == "Bone"
    assert segment.TrackingID == "bone-1"
    assert pydicom.uid.UID(str(segment.TrackingUID)).is_valid
    assert len(segment.RecommendedDisplayCIELabValue) == 3
    rgb = hd.color.CIELabColor.from_dicom_value(tuple(segment.RecommendedDisplayCIELabValue))
    assert np.allclose(rgb.to_rgb(), BONE.recommended_rgb, atol=1)
    assert seg.SoftwareVersions == software_versions()
    assert seg.DeviceSerialNumber == "pacs-ai-node"
    assert seg.ContentLabel == "AI"
    assert seg.SeriesDescription == "AI threshold demo"
    assert seg.TimezoneOffsetFromUTC


def test_ct3_pixels_round_trip_exactly(
    ct3_images: list[pydicom.Dataset], ct3_mask: np.ndarray, tmp_path: Path
) -> None:
    assert 0 < ct3_mask.sum() < ct3_mask.size

    seg = write_and_read(build(ct3_images, ct3_mask), tmp_path)

    np.testing.assert_array_equal(decoded_label_map(seg, ct3_images), ct3_mask)


def test_empty_frames_are_kept(
    ct3_images: list[pydicom.Dataset], ct3_mask: np.ndarray, tmp_path: Path
) -> None:
    mask = ct3_mask.copy()
    mask[0] = 0
    mask[2] = 0

    seg = write_and_read(build(ct3_images, mask), tmp_path)

    assert seg.NumberOfFrames == 3
    assert referenced_instance_uids(seg) == {ds.SOPInstanceUID for ds in ct3_images}
    np.testing.assert_array_equal(decoded_label_map(seg, ct3_images), mask)


def test_an_all_empty_label_map_still_gives_one_frame_per_slice(
    ct3_images: list[pydicom.Dataset], tmp_path: Path
) -> None:
    mask = np.zeros((3, 512, 512), dtype=np.uint8)

    seg = write_and_read(build(ct3_images, mask), tmp_path)

    assert seg.NumberOfFrames == 3


def test_labels_map_to_segment_numbers_in_segment_order(
    ct3_images: list[pydicom.Dataset], ct3_mask: np.ndarray, tmp_path: Path
) -> None:
    label_map = np.zeros(ct3_mask.shape, dtype=np.int32)
    label_map[ct3_mask == 1] = 7
    label_map[:, :100, :100] = 3
    specs = [
        SegmentSpec(7, "Bone", codes.SCT.Tissue, codes.SCT.Bone, "bone-1", (241, 214, 145)),
        SegmentSpec(3, "Corner", codes.SCT.Tissue, codes.SCT.SoftTissue, "corner", (0, 0, 255)),
    ]

    seg = write_and_read(build(ct3_images, label_map, segments=specs), tmp_path)

    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Bone", "Corner"]
    assert [s.SegmentNumber for s in seg.SegmentSequence] == [1, 2]
    expected = np.select([label_map == 7, label_map == 3], [1, 2], 0)
    np.testing.assert_array_equal(decoded_label_map(seg, ct3_images), expected)
    assert seg.NumberOfFrames == 2 * len(ct3_images)


def test_a_boolean_label_map_is_accepted(
    ct3_images: list[pydicom.Dataset], ct3_mask: np.ndarray, tmp_path: Path
) -> None:
    seg = write_and_read(build(ct3_images, ct3_mask.astype(bool)), tmp_path)

    np.testing.assert_array_equal(decoded_label_map(seg, ct3_images), ct3_mask)


# Determinism ----------------------------------------------------------------------------


def test_same_inputs_and_uids_give_the_same_uids(
    ct3_images: list[pydicom.Dataset], ct3_mask: np.ndarray
) -> None:
    first = build(ct3_images, ct3_mask)
    second = build(ct3_images, ct3_mask)

    assert first.SOPInstanceUID == second.SOPInstanceUID == INSTANCE_UID
    assert first.SeriesInstanceUID == second.SeriesInstanceUID == SERIES_UID
    assert first.SegmentSequence[0].TrackingUID == second.SegmentSequence[0].TrackingUID
    assert (
        first.DimensionOrganizationSequence[0].DimensionOrganizationUID
        == second.DimensionOrganizationSequence[0].DimensionOrganizationUID
    )
    assert first.PixelData == second.PixelData


# Input validation -----------------------------------------------------------------------


def test_no_source_images_is_rejected(ct3_mask: np.ndarray) -> None:
    with pytest.raises(ValueError, match="source_images is empty"):
        build([], ct3_mask)


def test_a_label_map_of_the_wrong_shape_is_rejected(
    ct3_images: list[pydicom.Dataset], ct3_mask: np.ndarray
) -> None:
    with pytest.raises(ValueError, match=r"label_map has shape \(2, 512, 512\)"):
        build(ct3_images, ct3_mask[:2])


def test_undescribed_labels_are_rejected(
    ct3_images: list[pydicom.Dataset], ct3_mask: np.ndarray
) -> None:
    label_map = ct3_mask.copy()
    label_map[0, 0, 0] = 2

    with pytest.raises(ValueError, match=r"labels \[2\] that no segment describes"):
        build(ct3_images, label_map)


def test_undescribed_labels_below_the_largest_are_rejected(
    ct3_images: list[pydicom.Dataset], ct3_mask: np.ndarray
) -> None:
    label_map = ct3_mask * 5
    label_map[0, 0, 0] = 1
    spec = SegmentSpec(5, "Bone", codes.SCT.Tissue, codes.SCT.Bone, "bone-1", (241, 214, 145))

    with pytest.raises(ValueError, match=r"labels \[1\] that no segment describes"):
        build(ct3_images, label_map, segments=[spec])


def test_negative_labels_are_rejected(
    ct3_images: list[pydicom.Dataset], ct3_mask: np.ndarray
) -> None:
    label_map = ct3_mask.astype(np.int16)
    label_map[1, 5, 5] = -1

    with pytest.raises(ValueError, match="negative"):
        build(ct3_images, label_map)


def test_a_float_label_map_is_rejected(
    ct3_images: list[pydicom.Dataset], ct3_mask: np.ndarray
) -> None:
    with pytest.raises(ValueError, match="integer labels"):
        build(ct3_images, ct3_mask.astype(np.float32))


def test_no_segments_and_repeated_labels_are_rejected(
    ct3_images: list[pydicom.Dataset], ct3_mask: np.ndarray
) -> None:
    with pytest.raises(ValueError, match="segments is empty"):
        build(ct3_images, ct3_mask, segments=[])
    with pytest.raises(ValueError, match="repeat label"):
        build(ct3_images, ct3_mask, segments=[BONE, LUNG])


def test_images_of_two_series_are_rejected(
    ct3_images: list[pydicom.Dataset], ct3_mask: np.ndarray
) -> None:
    other = copy.deepcopy(ct3_images[2])
    other.SeriesInstanceUID = derive_uid("another", "series")

    with pytest.raises(ValueError, match="SeriesInstanceUID"):
        build([*ct3_images[:2], other], ct3_mask)


def test_an_invalid_uid_is_rejected(
    ct3_images: list[pydicom.Dataset], ct3_mask: np.ndarray
) -> None:
    with pytest.raises(ValueError, match="sop_instance_uid"):
        build(ct3_images, ct3_mask, sop_instance_uid="1.2.03.x")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"label": 0}, "label must be a positive integer"),
        ({"recommended_rgb": (0, 0, 256)}, "recommended_rgb"),
        ({"label_name": ""}, "label_name must not be empty"),
        ({"tracking_id": "t" * 65}, "at most 64"),
    ],
)
def test_segment_spec_rejects_invalid_values(kwargs: dict[str, Any], match: str) -> None:
    values: dict[str, Any] = {
        "label": 1,
        "label_name": "Lung",
        "category": codes.SCT.Organ,
        "property_type": codes.SCT.Lung,
        "tracking_id": "lung-1",
        "recommended_rgb": (1, 2, 3),
    }
    values.update(kwargs)

    with pytest.raises(ValueError, match=match):
        SegmentSpec(**values)


# The 55-slice LIDC chest CT: one FrameOfReferenceUID per slice --------------------------


def test_lidc_without_a_frame_of_reference_is_rejected(
    lidc_images: list[pydicom.Dataset], lidc_mask: np.ndarray
) -> None:
    assert len({ds.FrameOfReferenceUID for ds in lidc_images}) == len(lidc_images)

    with pytest.raises(ValueError, match="FrameOfReferenceUID"):
        build(lidc_images, lidc_mask, segments=[LUNG])


def test_lidc_seg_with_the_first_slice_frame_of_reference(
    lidc_images: list[pydicom.Dataset], lidc_mask: np.ndarray, tmp_path: Path
) -> None:
    before = copy.deepcopy(lidc_images)
    frame_of_reference_uid = lidc_images[0].FrameOfReferenceUID

    seg = build(
        lidc_images,
        lidc_mask,
        segments=[LUNG],
        frame_of_reference_uid=frame_of_reference_uid,
    )

    assert lidc_images == before  # the caller's datasets were not mutated
    assert [ds.FrameOfReferenceUID for ds in lidc_images] == [
        ds.FrameOfReferenceUID for ds in before
    ]
    read = write_and_read(seg, tmp_path)
    assert read.FrameOfReferenceUID == frame_of_reference_uid
    assert read.NumberOfFrames == len(lidc_images) == 55
    assert referenced_instance_uids(read) == {ds.SOPInstanceUID for ds in lidc_images}
    assert_frames_match_their_sources(read, lidc_images)
    assert lidc_mask.sum() > 100_000  # a real lung mask, not an empty one
    np.testing.assert_array_equal(decoded_label_map(read, lidc_images), lidc_mask)
