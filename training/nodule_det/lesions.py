"""Synthetic lung nodules inserted into real CT, in patient geometry.

No nodule labels exist in the shared data, so ``nodule_det`` learns from lesions drawn into the
real LIDC chest CT. What a lesion is (all in millimetres and Hounsfield units, drawn from each
voxel's own patient position, so any pixel spacing, slice spacing or tilt is right):

Shape
    An ellipsoid with a random orientation. Its longest diameter is drawn log-uniformly from
    :data:`DIAMETER_MM` (6 to 20 mm); the two other semi-axes are that times a factor from
    :data:`AXIS_RATIO` (0.75 to 1.0) each. The surface is lobulated: the radius in direction
    ``u`` is multiplied by ``1 + sum_j a_j cos(k_j . u + phi_j)`` over three random waves
    (:data:`LOBULATION_WAVES`, wave numbers 2 to 4) whose amplitudes add up to at most
    :data:`LOBULATION` (0.12).
Edge
    Partial volume: a voxel's lesion fraction falls linearly from 1 to 0 across
    :data:`EDGE_MM` (1 mm) around the surface (about the 1 mm slice thickness and one to two
    pixels), so the lesion's mask (fraction at least 0.5) is its surface.
Density
    Solid nodules only: a mean from :data:`MEAN_HU` (-10 to 60 HU), plus Gaussian texture of
    :data:`TEXTURE_HU` (18 HU) standard deviation, smoothed in-plane with a 0.6 pixel Gaussian
    (like the scanner's own noise). A voxel becomes ``(1 - f) * background + f * lesion``.
Placement
    Centres inside the lung (the reference lung mask of ``training.lung_seg.labels``, holes
    filled) at least the lesion's largest semi-axis plus :data:`MARGIN_MM` (2 mm) from its
    edge in 3D, so a lesion lies in parenchyma (it may cover vessels, as real nodules do).

Ground-glass and part-solid nodules, juxtapleural and perifissural nodules, calcification and
spiculation are not drawn: the model has never seen them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from node.assembly.volume import Volume
from node.pipelines.measurements import voxel_positions_mm

__all__ = [
    "AXIS_RATIO",
    "DIAMETER_MM",
    "EDGE_MM",
    "LOBULATION",
    "MARGIN_MM",
    "MEAN_HU",
    "TEXTURE_HU",
    "Lesion",
    "insert_lesions",
    "lesion_fraction",
    "placement_candidates",
    "sample_lesion",
]

DIAMETER_MM = (6.0, 20.0)
AXIS_RATIO = (0.75, 1.0)
LOBULATION = 0.12
LOBULATION_WAVES = 3
EDGE_MM = 1.0
MEAN_HU = (-10.0, 60.0)
TEXTURE_HU = 18.0
TEXTURE_SMOOTHING_PX = 0.6
MARGIN_MM = 2.0


@dataclass(frozen=True, slots=True)
class Lesion:
    """One synthetic nodule.

    Attributes
    ----------
    center_mm
        Centre, patient coordinates (LPS, mm).
    semi_axes_mm
        The ellipsoid's semi-axes before lobulation (mm).
    rotation
        3x3 matrix whose columns are the directions of the semi-axes (LPS).
    mean_hu, texture_hu
        The lesion's mean attenuation and texture standard deviation (HU).
    waves
        Lobulation: ``(amplitude, wave vector (3,), phase)`` per wave; empty for a smooth
        ellipsoid (whose volume is exactly ``4/3 pi a b c``).
    seed
        Seed of the texture noise.
    """

    center_mm: tuple[float, float, float]
    semi_axes_mm: tuple[float, float, float]
    rotation: npt.NDArray[np.float64]
    mean_hu: float
    texture_hu: float = TEXTURE_HU
    waves: tuple[tuple[float, tuple[float, float, float], float], ...] = field(default=())
    seed: int = 0

    @property
    def reach_mm(self) -> float:
        """No voxel further than this from the centre belongs to the lesion."""
        amplitude = sum(abs(a) for a, _k, _p in self.waves)
        return max(self.semi_axes_mm) * (1 + amplitude) + EDGE_MM

    @property
    def ellipsoid_ml(self) -> float:
        """Volume of the smooth ellipsoid (mL); the lesion's when it has no lobulation."""
        a, b, c = self.semi_axes_mm
        return 4.0 / 3.0 * math.pi * a * b * c / 1000.0


def sample_lesion(
    rng: np.random.Generator,
    center_mm: Sequence[float],
    *,
    diameter_mm: tuple[float, float] = DIAMETER_MM,
) -> Lesion:
    """Draw a lesion centred at ``center_mm`` from the distributions in the module docs."""
    diameter = math.exp(rng.uniform(math.log(diameter_mm[0]), math.log(diameter_mm[1])))
    major = diameter / 2
    semi = (major, major * rng.uniform(*AXIS_RATIO), major * rng.uniform(*AXIS_RATIO))
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    amplitudes = rng.dirichlet(np.ones(LOBULATION_WAVES)) * rng.uniform(0.0, LOBULATION)
    waves = tuple(
        (
            float(a),
            tuple(float(v) for v in _unit(rng.normal(size=3)) * rng.uniform(2.0, 4.0)),
            float(rng.uniform(0, 2 * math.pi)),
        )
        for a in amplitudes
    )
    return Lesion(
        center_mm=(float(center_mm[0]), float(center_mm[1]), float(center_mm[2])),
        semi_axes_mm=semi,
        rotation=rotation,
        mean_hu=float(rng.uniform(*MEAN_HU)),
        waves=waves,  # type: ignore[arg-type]
        seed=int(rng.integers(0, 2**31 - 1)),
    )


def _unit(vector: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


def lesion_fraction(lesion: Lesion, points_mm: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The lesion's partial-volume fraction (0 to 1) at patient positions ``(N, 3)``."""
    offset = (points_mm - np.asarray(lesion.center_mm)) @ lesion.rotation
    distance = np.linalg.norm(offset, axis=1)
    scaled = np.linalg.norm(offset / np.asarray(lesion.semi_axes_mm), axis=1)
    direction = offset / np.maximum(distance, 1e-9)[:, None]
    modulation = np.ones(len(points_mm))
    for amplitude, wave, phase in lesion.waves:
        modulation += amplitude * np.cos(direction @ np.asarray(wave) + phase)
    # The surface radius along this direction, and the signed distance to it along the ray.
    surface = np.where(scaled > 0, distance / np.maximum(scaled, 1e-12), 0.0) * modulation
    signed = distance - surface
    fraction: npt.NDArray[np.float64] = np.clip(0.5 - signed / EDGE_MM, 0.0, 1.0)
    return fraction


def insert_lesions(
    volume: Volume,
    lesions: Sequence[Lesion],
    *,
    slices: Sequence[int] | None = None,
    rows: tuple[int, int] | None = None,
    cols: tuple[int, int] | None = None,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Draw ``lesions`` into a copy of (a box of) the volume's values.

    Parameters
    ----------
    volume
        The real series: its geometry and values (never modified).
    lesions
        What to draw.
    slices, rows, cols
        The box drawn into and returned: slice indices (all by default), and ``[start, stop)``
        row and column ranges (the whole slice by default).

    Returns
    -------
    tuple of numpy.ndarray
        The new values (float32, HU) and the lesions' fraction map (float32, 0 to 1; the
        lesion mask is ``fraction >= 0.5``), both ``(len(slices), rows, cols)`` of the box.
    """
    chosen = list(range(volume.array.shape[0])) if slices is None else list(slices)
    r_lo, r_hi = rows if rows is not None else (0, volume.array.shape[1])
    c_lo, c_hi = cols if cols is not None else (0, volume.array.shape[2])
    values = np.array(volume.array[chosen][:, r_lo:r_hi, c_lo:c_hi], dtype=np.float32)
    fraction = np.zeros(values.shape, dtype=np.float32)
    axes = volume.direction
    for lesion in lesions:
        reach = lesion.reach_mm
        for position, k in enumerate(chosen):
            origin = np.array([float(v) for v in volume.datasets[k].ImagePositionPatient])
            local = (np.asarray(lesion.center_mm) - origin) @ axes
            if abs(local[2]) > reach:
                continue
            total_rows, total_cols = volume.array.shape[1:]
            wr0, wr1 = _window(
                local[1] / volume.spacing[1], reach / volume.spacing[1], 0, total_rows
            )
            wc0, wc1 = _window(
                local[0] / volume.spacing[2], reach / volume.spacing[2], 0, total_cols
            )
            r0, r1, c0, c1 = max(wr0, r_lo), min(wr1, r_hi), max(wc0, c_lo), min(wc1, c_hi)
            if r1 <= r0 or c1 <= c0:
                continue
            grid = np.mgrid[r0:r1, c0:c1].reshape(2, -1).T
            index = np.column_stack([np.full(len(grid), k), grid])
            f = lesion_fraction(lesion, voxel_positions_mm(volume, index)).reshape(r1 - r0, c1 - c0)
            # The texture depends on the lesion and the slice only, never on the box.
            rng = np.random.default_rng([lesion.seed, k])
            noise = _texture(rng, (wr1 - wr0, wc1 - wc0), lesion.texture_hu)
            noise = noise[r0 - wr0 : r1 - wr0, c0 - wc0 : c1 - wc0]
            box = (position, slice(r0 - r_lo, r1 - r_lo), slice(c0 - c_lo, c1 - c_lo))
            values[box] = (1 - f) * values[box] + f * (lesion.mean_hu + noise)
            fraction[box] = np.maximum(fraction[box], f)
    return values, fraction


def _texture(
    rng: np.random.Generator, shape: tuple[int, int], std: float
) -> npt.NDArray[np.float64]:
    """Gaussian texture of standard deviation ``std`` after in-plane smoothing."""
    noise = ndimage.gaussian_filter(rng.normal(0.0, 1.0, shape), TEXTURE_SMOOTHING_PX)
    spread = float(noise.std()) or 1.0
    scaled: npt.NDArray[np.float64] = noise * (std / spread)
    return scaled


def _window(center: float, half: float, low: int, high: int) -> tuple[int, int]:
    return max(low, math.floor(center - half) - 1), min(high, math.ceil(center + half) + 2)


def placement_candidates(
    volume: Volume, lung: npt.NDArray[np.bool_], margin_mm: float
) -> npt.NDArray[np.int64]:
    """Voxel indices ``(N, 3)`` inside ``lung`` at least ``margin_mm`` from its edge (3D).

    Distances use the volume's spacing (slice, row, column), so a lesion centred on one of
    these voxels with a reach up to ``margin_mm`` stays inside the lung.
    """
    distance = ndimage.distance_transform_edt(lung, sampling=volume.spacing)
    found: npt.NDArray[np.int64] = np.argwhere(distance >= margin_mm).astype(np.int64)
    return found
