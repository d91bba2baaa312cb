"""The lung segmentation pipeline: what it accepts, and what it finds on a real chest CT.

What series the model is for (modality, body part, field of view, ...) is its card's to say:
tests/unit/models/test_intended_use.py checks those refusals.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import numpy.typing as npt
import pytest
from scipy import ndimage

from node.assembly.volume import Anomaly, AnomalyKind, Volume
from node.backends.torch import TorchBackend
from node.errors import NotAccepted
from node.pipelines.base import Pipeline
from node.pipelines.lung_seg import (
    BATCH_SIZE,
    LungSegmentation,
    fill_small_holes,
    keep_largest_components,
)


def _dice(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def _tilted(degrees: float) -> npt.NDArray[np.float64]:
    """Direction cosines of slices tilted about the patient's left-right axis."""
    t = math.radians(degrees)
    row, col = np.array([1.0, 0.0, 0.0]), np.array([0.0, math.cos(t), -math.sin(t)])
    return np.stack([row, col, np.cross(row, col)], axis=1)


def test_is_a_pipeline() -> None:
    pipeline: Pipeline = LungSegmentation()
    assert pipeline.name == "lung_seg"


def test_lidc_matches_the_reference(
    lidc: Volume, lidc_reference: npt.NDArray[np.bool_], backend: TorchBackend
) -> None:
    pipeline = LungSegmentation()
    pipeline.check(lidc)  # its inconsistent FrameOfReferenceUIDs do not matter per slice
    findings = pipeline.run(lidc, backend, "lung_seg", "1")
    assert (findings.model_name, findings.model_version) == ("lung_seg", "1")
    (label_map,) = findings.label_maps
    assert label_map.array.dtype == np.uint8
    assert label_map.array.shape == lidc.array.shape
    assert set(np.unique(label_map.array)) == {0, 1}
    (segment,) = label_map.segments
    assert (segment.label, segment.name) == (1, "Lung")
    assert (segment.property_type.value, segment.property_type.scheme) == ("39607008", "SCT")
    assert (segment.category.value, segment.category.scheme) == ("123037004", "SCT")
    assert _dice(label_map.array == 1, lidc_reference) >= 0.9


def test_any_slice_size(lidc: Volume, backend: TorchBackend) -> None:
    cropped = lidc.with_array(lidc.array[20:26, 40:470, 30:])
    findings = LungSegmentation().run(cropped, backend, "lung_seg", "1")
    mask = findings.label_maps[0].array
    assert mask.shape == (6, 430, 482)
    assert mask.sum() > 10000


def test_accepts_gantry_tilt_and_irregular_spacing(lidc: Volume) -> None:
    tilted = dataclasses.replace(
        lidc,
        direction=_tilted(18.5),
        anomalies=(
            Anomaly(AnomalyKind.GANTRY_TILT, "tilted"),
            Anomaly(AnomalyKind.IRREGULAR_SPACING, "irregular"),
            Anomaly(AnomalyKind.MISSING_SLICES, "gap"),
        ),
    )
    LungSegmentation().check(tilted)


def test_rejects_mixed_orientations(lidc: Volume) -> None:
    mixed = dataclasses.replace(
        lidc, anomalies=(Anomaly(AnomalyKind.MIXED_ORIENTATIONS, "2 orientations"),)
    )
    with pytest.raises(NotAccepted, match="orientations"):
        LungSegmentation().check(mixed)


def test_rejects_non_square_pixels(lidc: Volume) -> None:
    with pytest.raises(NotAccepted, match="square"):
        LungSegmentation().check(dataclasses.replace(lidc, spacing=(5.0, 0.78125, 0.9)))


def _largest_by_3d_labels(mask: npt.NDArray[np.bool_], fraction: float) -> npt.NDArray[np.bool_]:
    """The reference: one 3D labelling of the whole mask (4 bytes a voxel)."""
    labels, count = ndimage.label(mask)
    if count == 0:
        return np.zeros(mask.shape, dtype=bool)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    sizes[0] = 0
    order = np.argsort(-sizes, kind="stable")
    keep = [int(order[0])]
    if count > 1 and sizes[order[1]] >= fraction * sizes[order[0]]:
        keep.append(int(order[1]))
    return np.isin(labels, keep)


@pytest.mark.parametrize("density", [0.3, 0.45, 0.55, 0.7])
@pytest.mark.parametrize("fraction", [0.0, 0.25, 1.0])
def test_slice_wise_components_equal_3d_labelling(density: float, fraction: float) -> None:
    """The slice-by-slice union-find keeps exactly what a 3D labelling keeps, ties included
    (random masks near the percolation threshold give many components of equal size)."""
    rng = np.random.default_rng(int(density * 100))
    for _ in range(5):
        mask = rng.random((12, 17, 15)) < density
        expected = _largest_by_3d_labels(mask, fraction)
        assert np.array_equal(keep_largest_components(mask, fraction), expected)


def test_equal_components_rank_by_their_first_voxel() -> None:
    mask = np.zeros((4, 6, 6), dtype=bool)
    mask[2, 0, 0] = mask[3, 0, 0] = True  # two voxels, first met later (slice 2)
    mask[0, 5, 4] = mask[0, 5, 5] = True  # two voxels, first met first (slice 0)
    kept = keep_largest_components(mask, second_fraction=2.0)  # the largest only
    assert np.array_equal(kept, _largest_by_3d_labels(mask, 2.0))
    assert kept[0, 5].sum() == 2
    assert not kept[2:].any()


def test_components_of_an_empty_mask() -> None:
    assert not keep_largest_components(np.zeros((3, 4, 4), dtype=bool)).any()


def test_the_series_is_read_a_slab_at_a_time(
    lidc: Volume, backend: TorchBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pipeline never asks for the whole stack, only slabs of BATCH_SIZE slices."""
    fresh = dataclasses.replace(lidc)  # nothing read yet
    reads: list[int] = []
    original = Volume.read

    def counting(self: Volume, start: int, stop: int) -> npt.NDArray[np.float32]:
        reads.append(stop - start)
        return original(self, start, stop)

    monkeypatch.setattr(Volume, "read", counting)
    findings = LungSegmentation().run(fresh, backend, "lung_seg", "1")
    assert max(reads) == BATCH_SIZE
    assert sum(reads) == fresh.shape[0]
    assert "array" not in fresh.__dict__  # the whole stack was never built
    assert np.array_equal(
        findings.label_maps[0].array,
        LungSegmentation().run(lidc, backend, "lung_seg", "1").label_maps[0].array,
    )


def _filled_by_binary_fill_holes(
    mask: npt.NDArray[np.bool_], max_area_px: float
) -> npt.NDArray[np.bool_]:
    """The reference: scipy's binary_fill_holes, then the holes up to the area."""
    filled = mask.copy()
    for k in range(mask.shape[0]):
        holes = ndimage.binary_fill_holes(mask[k]) & ~mask[k]
        labels, count = ndimage.label(holes)
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        small = np.flatnonzero(sizes <= max_area_px)
        filled[k] |= np.isin(labels, small[small > 0])
    return filled


@pytest.mark.parametrize("density", [0.4, 0.6, 0.8])
@pytest.mark.parametrize("max_area", [0, 1, 3, 1000])
def test_hole_filling_equals_binary_fill_holes(density: float, max_area: int) -> None:
    rng = np.random.default_rng(int(density * 10) + max_area)
    mask = rng.random((6, 21, 19)) < density
    expected = _filled_by_binary_fill_holes(mask, max_area)
    assert np.array_equal(fill_small_holes(mask, max_area), expected)


def test_postprocessing_a_real_ct_threshold_equals_the_references(lidc: Volume) -> None:
    """On a noisy mask of the real CT (air below -400 HU: thousands of components), the
    slice-wise cleanup equals 3D labelling plus binary_fill_holes."""
    mask = lidc.array < -400
    expected = _filled_by_binary_fill_holes(_largest_by_3d_labels(mask, 0.25), 300)
    kept = keep_largest_components(mask, 0.25)
    assert np.array_equal(fill_small_holes(kept, 300), expected)
