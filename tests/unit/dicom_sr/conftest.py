"""Fixtures of the dicom_sr unit tests: the shared real DICOM data and series read from it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage

CT3_FOLDER = Path("dcmqi/ct-3slice_with_SEG/CT")
LIDC_FOLDER = Path("fnndsc-data/LIDC-IDRI-0314_CT_chest_every5th_slice")


def _read_sorted_series(folder: Path) -> list[pydicom.Dataset]:
    """Read a single-frame series and sort it by position along the slice normal."""
    paths = sorted(folder.glob("*.dcm"))
    if not paths:
        pytest.fail(f"no DICOM files in {folder}")
    images = [pydicom.dcmread(path) for path in paths]
    iop = np.asarray(images[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    return sorted(
        images,
        key=lambda ds: float(np.dot(normal, np.asarray(ds.ImagePositionPatient, float))),
    )


def _hounsfield(images: Sequence[pydicom.Dataset]) -> np.ndarray:
    """Stack the images as a (slices, rows, columns) volume in Hounsfield units."""
    return np.stack(
        [
            ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
            for ds in images
        ]
    )


def _lung_mask(hu: np.ndarray) -> np.ndarray:
    """Air inside the body (HU < -400), slice by slice: a crude but real lung mask."""
    body = np.stack([ndimage.binary_fill_holes(plane > -300) for plane in hu])
    return (body & (hu < -400)).astype(np.uint8)


@pytest.fixture
def ct3_images(shared_data: Path) -> list[pydicom.Dataset]:
    """The 3-slice dcmqi CT, sorted along the slice normal (fresh datasets per test)."""
    return _read_sorted_series(shared_data / CT3_FOLDER)


@pytest.fixture
def lidc_images(shared_data: Path) -> list[pydicom.Dataset]:
    """The 55-slice LIDC chest CT, sorted along the slice normal (fresh datasets per test)."""
    return _read_sorted_series(shared_data / LIDC_FOLDER)


@pytest.fixture
def ct3_mask(ct3_images: list[pydicom.Dataset]) -> np.ndarray:
    """Bone-and-contrast threshold (HU > 150) of the 3-slice CT, uint8 0/1."""
    return (_hounsfield(ct3_images) > 150).astype(np.uint8)


@pytest.fixture
def lidc_mask(lidc_images: list[pydicom.Dataset]) -> np.ndarray:
    """Lung threshold (HU < -400 inside the body) of the LIDC CT, uint8 0/1."""
    return _lung_mask(_hounsfield(lidc_images))
