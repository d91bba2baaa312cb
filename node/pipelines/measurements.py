"""Measurements of a segmented object in patient geometry: diameters, volume, mean value.

Everything is computed in millimetres from the series' own geometry, never from voxel counts
alone, so non-square pixels, any slice spacing (irregular too) and a tilted stack give the right
numbers:

* **position** of voxel ``(k, r, c)``: ``ImagePositionPatient`` of slice ``k`` plus
  ``c x column spacing`` along the row direction plus ``r x row spacing`` along the column
  direction (PS3.3 C.7.6.2.1.1);
* **volume**: Cavalieri's estimator, each voxel counting pixel area x the slice's share of the
  stack along the normal (half the distance to each neighbour; at the ends, the step to the one
  neighbour; a single slice, its SliceThickness);
* **long axis**: the longest in-plane diameter over the slices (the axial long axis of
  RECIST 1.1 and the Fleischner Society's 2017 nodule guidance on axial CT), measured between
  pixel centres of the slice's region plus the extent of one pixel along that direction;
* **short axis**: on the same slice, the region's width perpendicular to the long axis (again
  plus one pixel's extent): for a convex region, the longest perpendicular diameter;
* **mean**: of the volume's values (Hounsfield units on CT) over the region.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.spatial import ConvexHull, QhullError

from node.assembly.volume import Volume
from node.pipelines.findings import CodedConcept, Measurement

__all__ = [
    "ATTENUATION",
    "HOUNSFIELD_UNIT",
    "LONG_AXIS",
    "MEAN",
    "MILLILITER",
    "MILLIMETER",
    "SHORT_AXIS",
    "VOLUME",
    "RegionMeasurements",
    "measure_region",
    "slice_weights_mm",
    "voxel_positions_mm",
]

LONG_AXIS = CodedConcept("103339001", "SCT", "Long axis")
SHORT_AXIS = CodedConcept("103340004", "SCT", "Short axis")
VOLUME = CodedConcept("118565006", "SCT", "Volume")
ATTENUATION = CodedConcept("112031", "DCM", "Attenuation Coefficient")
MEAN = CodedConcept("373098007", "SCT", "Mean")
MILLIMETER = CodedConcept("mm", "UCUM", "millimeter")
MILLILITER = CodedConcept("ml", "UCUM", "milliliter")
HOUNSFIELD_UNIT = CodedConcept("[hnsf'U]", "UCUM", "Hounsfield unit")


@dataclass(frozen=True, slots=True)
class RegionMeasurements:
    """What :func:`measure_region` found for one region.

    Attributes
    ----------
    voxels
        Number of voxels in the region.
    volume_ml
        Volume in millilitres.
    long_axis_mm, short_axis_mm
        The in-plane long axis and its perpendicular short axis, on ``axis_slice``.
    axis_slice
        Index of the slice the axes were measured on.
    mean_value
        Mean of the volume's values over the region (HU on CT).
    center_mm
        Centroid in patient coordinates (LPS, mm), each voxel weighted by its volume.
    extent_mm
        Bounding box size along the row direction, column direction and slice normal (mm).
    """

    voxels: int
    volume_ml: float
    long_axis_mm: float
    short_axis_mm: float
    axis_slice: int
    mean_value: float
    center_mm: tuple[float, float, float]
    extent_mm: tuple[float, float, float]

    def as_measurements(self, *, units: CodedConcept = HOUNSFIELD_UNIT) -> tuple[Measurement, ...]:
        """The coded measurements of a report: long and short axis, volume, mean attenuation.

        Parameters
        ----------
        units
            The unit of the mean value (Hounsfield units on CT).
        """
        return (
            Measurement(LONG_AXIS, round(self.long_axis_mm, 2), MILLIMETER),
            Measurement(SHORT_AXIS, round(self.short_axis_mm, 2), MILLIMETER),
            Measurement(VOLUME, round(self.volume_ml, 4), MILLILITER),
            Measurement(ATTENUATION, round(self.mean_value, 1), units, derivation=MEAN),
        )


def slice_weights_mm(volume: Volume) -> npt.NDArray[np.float64]:
    """Each slice's share of the stack along the normal (mm), for volume integration.

    Half the distance to the previous slice plus half the distance to the next one; the first
    and last slices count the whole step to their one neighbour. A single slice counts its
    SliceThickness (1 mm if it has none).
    """
    positions = np.asarray(volume.positions, dtype=np.float64)
    if positions.size == 1:
        return np.array([float(volume.datasets[0].get("SliceThickness", 1.0) or 1.0)])
    steps = np.diff(positions)
    weights = np.empty_like(positions)
    weights[0], weights[-1] = steps[0], steps[-1]
    weights[1:-1] = (steps[:-1] + steps[1:]) / 2
    return weights


def voxel_positions_mm(volume: Volume, indices: npt.NDArray[np.integer]) -> npt.NDArray[np.float64]:
    """Patient coordinates (LPS, mm) of voxel centres.

    Parameters
    ----------
    volume
        The volume the indices refer to.
    indices
        ``(N, 3)`` integer ``(slice, row, column)`` indices.

    Returns
    -------
    numpy.ndarray
        ``(N, 3)`` positions, each from its own slice's ImagePositionPatient.
    """
    index = np.asarray(indices, dtype=np.int64).reshape(-1, 3)
    origins = np.array(
        [[float(v) for v in ds.ImagePositionPatient] for ds in volume.datasets], dtype=np.float64
    )
    row_dir, col_dir = volume.direction[:, 0], volume.direction[:, 1]
    row_mm, col_mm = volume.spacing[1], volume.spacing[2]
    return (
        origins[index[:, 0]]
        + np.outer(index[:, 2] * col_mm, row_dir)
        + np.outer(index[:, 1] * row_mm, col_dir)
    )


def measure_region(mask: npt.NDArray[np.bool_], volume: Volume) -> RegionMeasurements:
    """Measure the region ``mask`` marks on ``volume``'s grid.

    Parameters
    ----------
    mask
        ``(slices, rows, columns)`` bool, the shape of ``volume.array``.
    volume
        The series: its geometry and values.

    Returns
    -------
    RegionMeasurements

    Raises
    ------
    ValueError
        If the mask's shape differs from the volume's or the mask is empty.
    """
    if mask.shape != volume.array.shape:
        raise ValueError(f"mask has shape {mask.shape}, the volume {volume.array.shape}")
    indices = np.argwhere(mask)
    if indices.size == 0:
        raise ValueError("the region is empty: nothing to measure")
    row_mm, col_mm = volume.spacing[1], volume.spacing[2]
    weights = slice_weights_mm(volume)
    voxel_weight = weights[indices[:, 0]]
    volume_mm3 = float(voxel_weight.sum()) * row_mm * col_mm
    positions = voxel_positions_mm(volume, indices)
    center = (positions * voxel_weight[:, None]).sum(axis=0) / voxel_weight.sum()

    long_mm, short_mm, axis_slice = 0.0, 0.0, int(indices[0, 0])
    for k in np.unique(indices[:, 0]):
        in_slice = indices[indices[:, 0] == k][:, 1:]
        long_k, short_k = _axes_mm(in_slice, row_mm, col_mm)
        if long_k > long_mm:
            long_mm, short_mm, axis_slice = long_k, short_k, int(k)

    lows, highs = indices.min(axis=0), indices.max(axis=0)
    along = np.asarray(volume.positions, dtype=np.float64)
    normal_extent = along[highs[0]] - along[lows[0]] + (weights[lows[0]] + weights[highs[0]]) / 2
    extent = (
        float((highs[2] - lows[2] + 1) * col_mm),
        float((highs[1] - lows[1] + 1) * row_mm),
        float(normal_extent),
    )
    return RegionMeasurements(
        voxels=int(indices.shape[0]),
        volume_ml=volume_mm3 / 1000.0,
        long_axis_mm=long_mm,
        short_axis_mm=short_mm,
        axis_slice=axis_slice,
        mean_value=float(volume.array[mask].mean()),
        center_mm=(float(center[0]), float(center[1]), float(center[2])),
        extent_mm=extent,
    )


def _axes_mm(pixels: npt.NDArray[np.integer], row_mm: float, col_mm: float) -> tuple[float, float]:
    """Long axis and perpendicular width (mm) of one slice's region, given ``(row, col)``."""
    # In-plane millimetres: u along the row direction (columns), v along the column direction.
    points = np.column_stack([pixels[:, 1] * col_mm, pixels[:, 0] * row_mm]).astype(np.float64)
    hull = _hull_points(points)
    if len(hull) == 1:
        return max(row_mm, col_mm), min(row_mm, col_mm)
    differences = hull[:, None, :] - hull[None, :, :]
    distances = np.hypot(differences[..., 0], differences[..., 1])
    i, j = np.unravel_index(int(np.argmax(distances)), distances.shape)
    direction = differences[i, j] / distances[i, j]
    perpendicular = np.array([-direction[1], direction[0]])
    projected = points @ perpendicular
    long_axis = float(distances[i, j]) + _pixel_extent(direction, col_mm, row_mm)
    width = float(projected.max() - projected.min()) + _pixel_extent(perpendicular, col_mm, row_mm)
    return long_axis, width


def _pixel_extent(direction: npt.NDArray[np.float64], col_mm: float, row_mm: float) -> float:
    """The length of one pixel (col_mm wide, row_mm high) projected on a unit ``direction``."""
    return abs(float(direction[0])) * col_mm + abs(float(direction[1])) * row_mm


def _hull_points(points: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The convex hull's vertices (all unique points when they are too few or collinear)."""
    unique = np.unique(points, axis=0)
    if len(unique) < 3:
        return unique
    try:
        vertices: npt.NDArray[np.float64] = unique[ConvexHull(unique).vertices]
    except QhullError:  # collinear points: every one is on the "hull"
        return unique
    return vertices
