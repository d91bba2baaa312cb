"""Fixtures of the pipeline tests: the LIDC chest CT read once, and analytic shapes in it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom.dataset import Dataset

from node.assembly.volume import Volume, volume_from_datasets
from node.pipelines.measurements import voxel_positions_mm


@pytest.fixture(scope="session")
def lidc_datasets(lidc_dir: Path) -> list[Dataset]:
    """The 55 LIDC slices with pixel data, in file-name order (the Volume sorts them)."""
    return [pydicom.dcmread(p) for p in sorted(lidc_dir.glob("*.dcm"))]


@pytest.fixture(scope="session")
def lidc_volume(lidc_datasets: list[Dataset]) -> Volume:
    """The LIDC chest CT as the node assembles it."""
    return volume_from_datasets(lidc_datasets)


def ellipsoid_mask(
    volume: Volume,
    center_mm: tuple[float, float, float],
    semi_axes_mm: tuple[float, float, float],
) -> npt.NDArray[np.bool_]:
    """Voxels whose centres lie inside an ellipsoid in patient space.

    The ellipsoid's axes follow the volume's row direction, column direction and slice normal,
    with the given semi-axes (mm). Computed from each voxel's own patient position, so it is
    exact for any pixel spacing, slice spacing or tilt.
    """
    mask = np.zeros(volume.array.shape, dtype=bool)
    rows, cols = volume.array.shape[1:]
    axes = volume.direction  # columns: row direction, column direction, normal
    reach = max(semi_axes_mm)
    for k, ds in enumerate(volume.datasets):
        origin = np.array([float(v) for v in ds.ImagePositionPatient])
        local = (np.asarray(center_mm) - origin) @ axes
        if abs(local[2]) > reach:
            continue
        # Only the window of pixels that can be inside: the rest are not.
        col_c, row_c = local[0] / volume.spacing[2], local[1] / volume.spacing[1]
        r0, r1 = _window(row_c, reach / volume.spacing[1], rows)
        c0, c1 = _window(col_c, reach / volume.spacing[2], cols)
        grid = np.mgrid[r0:r1, c0:c1].reshape(2, -1).T
        index = np.column_stack([np.full(len(grid), k), grid])
        offset = (voxel_positions_mm(volume, index) - np.asarray(center_mm)) @ axes
        inside = ((offset / np.asarray(semi_axes_mm)) ** 2).sum(axis=1) <= 1.0
        mask[k, r0:r1, c0:c1] = inside.reshape(r1 - r0, c1 - c0)
    return mask


def _window(center: float, half: float, size: int) -> tuple[int, int]:
    return max(0, int(np.floor(center - half)) - 2), min(size, int(np.ceil(center + half)) + 3)
