"""Nodule measurements against analytic values: spheres and ellipsoids placed in real series.

Each shape is drawn from every voxel's own patient position (``conftest.ellipsoid_mask``), in
the real LIDC chest CT (0.78 mm pixels, 5 mm slices), in copies of it with non-square pixels or
irregular slice spacing, and in the real GE head CT (18.5 degree gantry tilt, slices 1.08 to
7 mm apart). Diameters and volumes must match the analytic values within 5 %.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset

from node.assembly.volume import AnomalyKind, Volume, load_volume, volume_from_datasets
from node.pipelines.measurements import (
    ATTENUATION,
    HOUNSFIELD_UNIT,
    LONG_AXIS,
    MEAN,
    MILLILITER,
    MILLIMETER,
    SHORT_AXIS,
    VOLUME,
    measure_region,
    slice_weights_mm,
)
from tests.unit.pipelines.conftest import ellipsoid_mask

HEAD_CT = "dcm_qa_ct/GE_HiSpeedDual_head_CT_gantry_tilt_variable_spacing"
TOLERANCE = 0.05


def _sphere_ml(radius_mm: float) -> float:
    return 4.0 / 3.0 * math.pi * radius_mm**3 / 1000.0


def _on_slice(volume: Volume, k: int, row: float, col: float) -> tuple[float, float, float]:
    """Patient position of (row, col) on slice ``k`` (fractional pixels allowed)."""
    origin = np.array([float(v) for v in volume.datasets[k].ImagePositionPatient])
    point = (
        origin
        + col * volume.spacing[2] * volume.direction[:, 0]
        + row * volume.spacing[1] * volume.direction[:, 1]
    )
    return float(point[0]), float(point[1]), float(point[2])


def _filled(volume: Volume, mask: np.ndarray, value: float) -> Volume:
    array = volume.array.copy()
    array[mask] = value
    return volume.with_array(array)


def _close(measured: float, expected: float, tolerance: float = TOLERANCE) -> bool:
    return abs(measured - expected) <= tolerance * expected


@pytest.mark.parametrize("between_slices", [False, True])
def test_sphere_in_the_real_chest_ct(lidc_volume: Volume, between_slices: bool) -> None:
    radius = 15.0
    center = _on_slice(lidc_volume, 25, 250.3, 140.6)
    if between_slices:  # halfway between two slices: the worst case for the axial diameter
        center = (center[0], center[1], center[2] + lidc_volume.spacing[0] / 2)
    mask = ellipsoid_mask(lidc_volume, center, (radius, radius, radius))
    result = measure_region(mask, _filled(lidc_volume, mask, 42.0))

    assert _close(result.volume_ml, _sphere_ml(radius)), result
    expected_diameter = 2 * radius
    if between_slices:  # the nearest slice cuts the sphere 2.5 mm off its centre
        expected_diameter = 2 * math.sqrt(radius**2 - (lidc_volume.spacing[0] / 2) ** 2)
    assert _close(result.long_axis_mm, expected_diameter), result
    assert _close(result.short_axis_mm, expected_diameter), result
    assert result.mean_value == pytest.approx(42.0)
    assert np.allclose(result.center_mm, center, atol=0.5)
    assert _close(result.extent_mm[0], 2 * radius, 0.06)


def test_non_square_pixels(lidc_datasets: list[Dataset]) -> None:
    stretched = []
    for ds in lidc_datasets:
        changed = copy.copy(ds)
        changed.PixelSpacing = [0.9, 0.6]  # rows 0.9 mm apart, columns 0.6 mm
        stretched.append(changed)
    volume = volume_from_datasets(stretched)
    assert volume.spacing[1:] == (0.9, 0.6)
    radius = 15.0
    center = _on_slice(volume, 30, 200.0, 300.0)
    mask = ellipsoid_mask(volume, center, (radius, radius, radius))
    # In voxels the sphere is an ellipse: 50 columns wide, 33 rows high.
    rows = np.flatnonzero(mask[30].any(axis=1))
    cols = np.flatnonzero(mask[30].any(axis=0))
    assert len(cols) > 1.4 * len(rows)
    result = measure_region(mask, volume)
    assert _close(result.long_axis_mm, 2 * radius), result
    assert _close(result.short_axis_mm, 2 * radius), result
    assert _close(result.volume_ml, _sphere_ml(radius)), result


def test_irregular_slice_spacing(lidc_volume: Volume, lidc_datasets: list[Dataset]) -> None:
    by_position = sorted(
        lidc_datasets, key=lambda ds: float(ds.ImagePositionPatient[2])
    )  # axial, feet first
    kept = [ds for k, ds in enumerate(by_position) if k % 3 != 1]  # steps of 5 and 10 mm
    volume = volume_from_datasets(kept)
    assert volume.has(AnomalyKind.IRREGULAR_SPACING) or volume.has(AnomalyKind.MISSING_SLICES)
    assert set(np.round(np.diff(volume.positions), 3)) == {5.0, 10.0}
    radius = 20.0
    center = _on_slice(volume, 18, 250.0, 150.0)
    mask = ellipsoid_mask(volume, center, (radius, radius, radius))
    result = measure_region(mask, volume)
    assert _close(result.volume_ml, _sphere_ml(radius)), result
    assert _close(result.long_axis_mm, 2 * radius), result


def test_tilted_head_ct_with_variable_spacing(shared_data: Path) -> None:
    folder = shared_data / HEAD_CT
    volume = load_volume(sorted(p for p in folder.iterdir() if p.suffix == ".dcm"))
    assert volume.has(AnomalyKind.GANTRY_TILT)
    steps = np.diff(volume.positions)
    assert steps.max() > 2 * steps.min()
    # A sphere where the slices are 4 mm apart, and one across the 4 -> 1.08 -> 7 mm change.
    for k, radius in ((6, 12.0), (13, 25.0)):
        center = _on_slice(volume, k, 256.0, 256.0)
        mask = ellipsoid_mask(volume, center, (radius, radius, radius))
        result = measure_region(mask, volume)
        assert _close(result.long_axis_mm, 2 * radius), result
        assert _close(result.volume_ml, _sphere_ml(radius)), result
    # ... and the slice weights add up to the stack's length plus the two end steps' halves.
    weights = slice_weights_mm(volume)
    span = volume.positions[-1] - volume.positions[0]
    assert weights.sum() == pytest.approx(span + (steps[0] + steps[-1]) / 2)


def test_ellipsoid_long_and_short_axis(lidc_volume: Volume) -> None:
    semi = (16.0, 9.0, 12.5)  # along the row direction, the column direction, the normal
    center = _on_slice(lidc_volume, 20, 260.0, 380.0)
    mask = ellipsoid_mask(lidc_volume, center, semi)
    result = measure_region(mask, lidc_volume)
    assert _close(result.long_axis_mm, 2 * semi[0]), result
    assert _close(result.short_axis_mm, 2 * semi[1]), result
    expected_ml = 4.0 / 3.0 * math.pi * semi[0] * semi[1] * semi[2] / 1000.0
    assert _close(result.volume_ml, expected_ml), result
    assert result.axis_slice == 20


def test_coded_measurements_and_units(lidc_volume: Volume) -> None:
    center = _on_slice(lidc_volume, 25, 250.0, 140.0)
    mask = ellipsoid_mask(lidc_volume, center, (10.0, 10.0, 10.0))
    long_axis, short_axis, volume, mean = measure_region(mask, lidc_volume).as_measurements()
    assert (long_axis.name, long_axis.unit) == (LONG_AXIS, MILLIMETER)
    assert (short_axis.name, short_axis.unit) == (SHORT_AXIS, MILLIMETER)
    assert (volume.name, volume.unit) == (VOLUME, MILLILITER)
    assert (mean.name, mean.unit, mean.derivation) == (ATTENUATION, HOUNSFIELD_UNIT, MEAN)


def test_a_single_voxel_and_errors(lidc_volume: Volume) -> None:
    mask = np.zeros(lidc_volume.array.shape, dtype=bool)
    with pytest.raises(ValueError, match="empty"):
        measure_region(mask, lidc_volume)
    with pytest.raises(ValueError, match="shape"):
        measure_region(mask[:3], lidc_volume)
    mask[10, 100, 100] = True
    result = measure_region(mask, lidc_volume)
    assert result.long_axis_mm == pytest.approx(lidc_volume.spacing[1])
    assert result.volume_ml == pytest.approx(0.78125**2 * 5.0 / 1000.0)


def test_single_slice_uses_its_thickness(lidc_datasets: list[Dataset]) -> None:
    one = volume_from_datasets([lidc_datasets[0]])
    assert slice_weights_mm(one).tolist() == [float(lidc_datasets[0].SliceThickness)]
