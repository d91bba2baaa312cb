"""Fixtures of the dicom_sr unit tests: the shared real DICOM data and series read from it."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage

REPO_ROOT = Path(__file__).resolve().parents[3]
DATA_ENV = "PACS_AI_NODE_TEST_DATA"

# The project is not installed in the venv and pyproject sets no pytest `pythonpath`
# yet: make the repository's packages importable until it does.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

CT3_FOLDER = Path("dcmqi/ct-3slice_with_SEG/CT")
LIDC_FOLDER = Path("fnndsc-data/LIDC-IDRI-0314_CT_chest_every5th_slice")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the shared DICOM test data: ``$PACS_AI_NODE_TEST_DATA`` or ``../shared/data``.

    A relative setting is resolved against the repository root. A missing folder fails the
    test, never skips it.
    """
    setting = Path(os.environ.get(DATA_ENV, "../shared/data"))
    root = (setting if setting.is_absolute() else REPO_ROOT / setting).resolve()
    if not (root / "MANIFEST.md").is_file():
        pytest.fail(f"shared test data not found at {root} (set {DATA_ENV} to its folder)")
    return root


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
