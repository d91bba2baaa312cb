"""Parametric Maps of explanation heat maps on the real LIDC chest CT: valid, and in place."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.sr.codedict import codes

from dicom_sr import AlgorithmIdentification, dciodvfy_errors, derive_uid
from dicom_sr.pm import HeatMapSpec, build_parametric_map

ALGORITHM = AlgorithmIdentification(name="nodule_det", version="3")


@pytest.fixture(scope="module")
def lidc(shared_data: Path) -> list[Dataset]:
    folder = shared_data / "fnndsc-data/LIDC-IDRI-0314_CT_chest_every5th_slice"
    images = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.glob("*.dcm"))]
    return sorted(images, key=lambda ds: float(ds.ImagePositionPatient[2]))


def _build(images: list[Dataset], array: np.ndarray) -> Dataset:
    return build_parametric_map(
        source_images=images,
        heat_map=HeatMapSpec(
            array=array,
            content_label="OCCLUSION",
            description="Occlusion sensitivity of nodule-1",
            method=codes.DCM.Saliency,
        ),
        algorithm=ALGORITHM,
        series_instance_uid=derive_uid("job-p", "pm0", "series"),
        sop_instance_uid=derive_uid("job-p", "pm0", "instance"),
        series_number=9003,
        series_description="AI nodule_det v3 occlusion",
        frame_of_reference_uid=str(images[0].FrameOfReferenceUID),
    )


@pytest.mark.parametrize("size", [256, 512])
def test_valid_and_on_the_source_planes(lidc: list[Dataset], tmp_path: Path, size: int) -> None:
    array = np.zeros((len(lidc), size, size), dtype=np.float32)
    factor = 512 // size
    array[30, 200 // factor : 240 // factor, 160 // factor : 200 // factor] = 0.75
    path = tmp_path / "pm.dcm"
    _build(lidc, array).save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []

    read = pydicom.dcmread(path)
    assert read.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"
    assert read.StudyInstanceUID == lidc[0].StudyInstanceUID
    assert read.FrameOfReferenceUID == lidc[0].FrameOfReferenceUID
    assert read.ContentLabel == "OCCLUSION"
    assert read.ContentDescription.startswith("nodule_det@3: ")
    [mapping] = read.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence
    assert mapping.LUTLabel == "OCCLUSION"
    assert mapping.LUTExplanation == "Occlusion sensitivity of nodule-1"
    assert float(mapping.RealWorldValueSlope) == 1.0
    assert int(read.BitsAllocated) == 32  # float pixels, as OHIF's map viewer needs
    assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == "1"
    [quantity] = mapping.QuantityDefinitionSequence
    assert quantity.ConceptCodeSequence[0].CodeValue == codes.DCM.Saliency.value
    # On the source grid whatever the map's (OHIF's map viewer needs the source's size).
    assert (int(read.Rows), int(read.Columns)) == (512, 512)
    spacing = read.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    assert [float(v) for v in spacing] == pytest.approx([0.78125] * 2)

    # One frame per source image (OHIF needs them all); the hot one lies on slice 30's plane,
    # references slice 30, and its values map back.
    assert int(read.NumberOfFrames) == len(lidc)
    pixels = read.pixel_array
    [hot] = [i for i in range(pixels.shape[0]) if pixels[i].any()]
    frame = read.PerFrameFunctionalGroupsSequence[hot]
    z = float(frame.PlanePositionSequence[0].ImagePositionPatient[2])
    assert z == pytest.approx(float(lidc[30].ImagePositionPatient[2]))
    source = frame.DerivationImageSequence[0].SourceImageSequence[0]
    assert source.ReferencedSOPInstanceUID == lidc[30].SOPInstanceUID
    values = pixels[hot] * float(mapping.RealWorldValueSlope)
    assert values.max() == pytest.approx(0.75)
    # Each coarse pixel covers the source pixels it stands for.
    assert np.array_equal(np.argwhere(values > 0).min(axis=0), [200, 160])
    assert np.array_equal(np.argwhere(values > 0).max(axis=0), [239, 199])
    x = float(frame.PlanePositionSequence[0].ImagePositionPatient[0])
    assert x == pytest.approx(float(lidc[30].ImagePositionPatient[0]))


def test_refuses_maps_that_do_not_fit(lidc: list[Dataset]) -> None:
    with pytest.raises(ValueError, match="does not fit"):
        _build(lidc, np.zeros((len(lidc), 200, 200), dtype=np.float32))
    with pytest.raises(ValueError, match="does not fit"):
        _build(lidc[:10], np.zeros((len(lidc), 256, 256), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        HeatMapSpec(np.full((1, 2, 2), 1.5), "X", "y", codes.DCM.Saliency)
    with pytest.raises(ValueError, match="content_label"):
        HeatMapSpec(np.zeros((1, 2, 2)), "lower case", "y", codes.DCM.Saliency)


def test_same_job_same_uids(lidc: list[Dataset]) -> None:
    array = np.zeros((len(lidc), 256, 256), dtype=np.float32)
    first, second = _build(lidc, array), _build(lidc, array)
    assert (first.SeriesInstanceUID, first.SOPInstanceUID) == (
        second.SeriesInstanceUID,
        second.SOPInstanceUID,
    )
