"""The classical reference lung mask on real chest CT."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest
from scipy import ndimage

from node.assembly.volume import Volume
from training.lung_seg.labels import reference_lung_mask


def test_lidc_lung_volume_is_plausible(lidc: Volume, lidc_reference: npt.NDArray[np.bool_]) -> None:
    voxel_ml = float(np.prod(lidc.spacing)) / 1000.0
    total_ml = float(lidc_reference.sum()) * voxel_ml
    assert 1500.0 < total_ml < 8000.0


def test_lidc_has_one_lung_on_each_side(
    lidc: Volume, lidc_reference: npt.NDArray[np.bool_]
) -> None:
    labels, count = ndimage.label(lidc_reference)
    assert count == 2
    voxel_ml = float(np.prod(lidc.spacing)) / 1000.0
    centres = []
    for label in (1, 2):
        component = labels == label
        assert float(component.sum()) * voxel_ml > 300.0
        centres.append(float(np.nonzero(component)[2].mean()))
    middle = lidc.array.shape[2] / 2
    assert min(centres) < middle < max(centres)


def test_lidc_trachea_and_neck_are_not_lung(lidc_reference: npt.NDArray[np.bool_]) -> None:
    # Slices 51-54 (z order) show only the neck and trachea: above both lung apices.
    assert not lidc_reference[51:].any()
    # Slices 0-2 are below the lungs (liver dome, bowel gas).
    assert not lidc_reference[:3].any()


def test_mask_is_deterministic_and_bool(load_series: Callable[[str], Volume]) -> None:
    volume = load_series("dcmqi/ct-3slice_with_SEG/CT")
    first = reference_lung_mask(volume.array, volume.spacing)
    second = reference_lung_mask(volume.array.copy(), volume.spacing)
    assert first.dtype == np.bool_
    assert first.shape == volume.array.shape
    assert np.array_equal(first, second)
    assert ndimage.label(first)[1] == 2  # the two lung bases


def test_rejects_a_2d_array() -> None:
    with pytest.raises(ValueError, match="3D"):
        reference_lung_mask(np.zeros((4, 4), np.float32), (1.0, 1.0, 1.0))
