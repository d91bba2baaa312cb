"""Training samples of ``nodule_det``: 2.5D patches of the real chest CT with drawn nodules.

A sample is a 64x64 patch at the network's resolution (100 mm square; 1.5625 mm pixels), three
channels (the slice and its two neighbours), and the nodule mask of the middle slice. It is made
at the scanner's resolution and then reduced exactly as the node reduces whole slices
(:func:`node.pipelines.nodule_det.preprocess`): a window of the three slices, 4 pixels wider on
each side than the patch, gets its lesions drawn (:mod:`training.nodule_det.lesions`), is
windowed, scaled and resized by the node's own functions, and its border is cut off, so the
patch equals the same region of the node's preprocessed slices.

Of the samples, :data:`POSITIVE_FRACTION` are centred near a nodule drawn on the slice or one
of its neighbours (a second one sometimes beside it); the rest have none, centred on lung
(:data:`LUNG_NEGATIVE_FRACTION` of them) or anywhere in the body (mediastinum, chest wall,
liver), so the network also learns what is not a nodule.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from node.pipelines.lung_seg import HU_WINDOW, resize_slices
from node.pipelines.measurements import voxel_positions_mm
from node.pipelines.nodule_det import CONTEXT_SLICES, INPUT_SIZE
from training.nodule_det.data import Series
from training.nodule_det.lesions import MARGIN_MM, Lesion, insert_lesions, sample_lesion

__all__ = [
    "PATCH",
    "POSITIVE_FRACTION",
    "SampleMaker",
]

#: Patch size at the network's resolution.
PATCH = 64
#: Full-resolution pixels per network pixel (512 → 256).
_FACTOR = 2
#: Extra full-resolution pixels each side, cut off after resizing (the resize's reach).
_PAD = 4
POSITIVE_FRACTION = 0.6
LUNG_NEGATIVE_FRACTION = 0.7
#: A second nodule is drawn in this fraction of the positive samples.
SECOND_NODULE_FRACTION = 0.3


@dataclass(frozen=True, slots=True)
class Sample:
    """Network input ``(3, PATCH, PATCH)`` in ``[0, 1]`` and target ``(1, PATCH, PATCH)``."""

    image: npt.NDArray[np.float32]
    target: npt.NDArray[np.float32]
    lesions: int


class SampleMaker:
    """Makes samples centred on given slices of a series (see the module docs).

    Parameters
    ----------
    series
        The chest CT and its lung mask.
    slices
        The slices samples may be centred on (the training slices).
    """

    def __init__(self, series: Series, slices: list[int]) -> None:
        volume = series.volume
        if volume.array.shape[1:] != tuple(_FACTOR * s for s in INPUT_SIZE):
            raise ValueError(f"expected {_FACTOR}x the network size, got {volume.array.shape}")
        self.series = series
        self.slices = slices
        self._distance = ndimage.distance_transform_edt(series.lung, sampling=volume.spacing)
        body = np.stack([ndimage.binary_fill_holes(s > -500) for s in volume.array])
        self._body = [np.argwhere(body[k]) for k in range(volume.array.shape[0])]
        self._lung = [np.argwhere(series.lung[k]) for k in range(volume.array.shape[0])]

    def make(self, rng: np.random.Generator) -> Sample:
        """One random sample."""
        volume = self.series.volume
        k = int(rng.choice(self.slices))
        lesions: list[Lesion] = []
        if rng.random() < POSITIVE_FRACTION:
            first = self._lesion_near(rng, k, None)
            if first is not None:
                lesion, (row, col) = first
                lesions.append(lesion)
                shift = rng.integers(-20, 21, 2) * _FACTOR
                center = (row + int(shift[0]), col + int(shift[1]))
                if rng.random() < SECOND_NODULE_FRACTION:
                    second = self._lesion_near(rng, k, center)
                    if second is not None:
                        lesions.append(second[0])
        if not lesions:
            pool = self._lung[k] if rng.random() < LUNG_NEGATIVE_FRACTION else self._body[k]
            row, col = (int(v) for v in pool[rng.integers(len(pool))])
            center = (row, col)
        return self._patch(k, center, lesions, volume.array.shape[1:])

    def _lesion_near(
        self, rng: np.random.Generator, k: int, center: tuple[int, int] | None
    ) -> tuple[Lesion, tuple[int, int]] | None:
        """A lesion on slice ``k`` or a neighbour (within the patch around ``center``)."""
        volume = self.series.volume
        slice_index = int(np.clip(k + rng.integers(-1, 2), 0, volume.array.shape[0] - 1))
        shape = sample_lesion(rng, (0.0, 0.0, 0.0))  # its size decides where it fits
        spots = np.argwhere(self._distance[slice_index] >= shape.reach_mm + MARGIN_MM)
        if center is not None and len(spots):
            half = (PATCH // 2 - 4) * _FACTOR
            near = (np.abs(spots[:, 0] - center[0]) < half) & (
                np.abs(spots[:, 1] - center[1]) < half
            )
            spots = spots[near]
        if len(spots) == 0:
            return None
        row, col = (int(v) for v in spots[rng.integers(len(spots))])
        position = voxel_positions_mm(volume, np.array([[slice_index, row, col]]))[0]
        jitter = rng.uniform(-0.5, 0.5, 3) * np.array(
            [volume.spacing[2], volume.spacing[1], volume.spacing[0]]
        )
        center_mm = position + volume.direction @ jitter  # row dir, column dir, normal
        lesion = dataclasses.replace(
            shape, center_mm=(float(center_mm[0]), float(center_mm[1]), float(center_mm[2]))
        )
        return lesion, (row, col)

    def _patch(
        self, k: int, center: tuple[int, int], lesions: list[Lesion], shape: tuple[int, ...]
    ) -> Sample:
        """Draw ``lesions`` in the window around ``center`` and reduce it to a patch."""
        half = PATCH // 2 * _FACTOR + _PAD
        row0 = int(np.clip(center[0] - half, 0, shape[0] - 2 * half)) // _FACTOR * _FACTOR
        col0 = int(np.clip(center[1] - half, 0, shape[1] - 2 * half)) // _FACTOR * _FACTOR
        count = self.series.volume.array.shape[0]
        slices = [
            int(np.clip(k + d, 0, count - 1)) for d in range(-CONTEXT_SLICES, CONTEXT_SLICES + 1)
        ]
        values, fraction = insert_lesions(
            self.series.volume,
            lesions,
            slices=slices,
            rows=(row0, row0 + 2 * half),
            cols=(col0, col0 + 2 * half),
        )
        low, high = HU_WINDOW
        scaled = (np.clip(values, low, high) - low) / (high - low)
        size = (2 * half // _FACTOR, 2 * half // _FACTOR)
        cut = _PAD // _FACTOR
        image = resize_slices(scaled, size)[:, cut:-cut, cut:-cut]
        middle = resize_slices(fraction[CONTEXT_SLICES : CONTEXT_SLICES + 1], size)
        target = (middle[:, cut:-cut, cut:-cut] >= 0.5).astype(np.float32)
        return Sample(image=np.ascontiguousarray(image), target=target, lesions=len(lesions))
