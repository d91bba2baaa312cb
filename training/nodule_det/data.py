"""The series ``nodule_det`` trains and is evaluated on, how it is split, and its real nodule.

One series: the LIDC-IDRI-0314 chest CT of the shared data (55 slices, 5 mm apart, 512x512 at
0.78 mm). Slices are numbered in the node's order (sorted along the slice normal, feet first:
slice 0 is at z = -679.8 mm, slice 54 at z = -409.8 mm).

Split
    :data:`HELD_OUT` (slices 28 to 38, z = -539.8 to -489.8 mm, 55 mm of upper chest) is never
    trained on; :data:`GUARD` (slices 27 and 39) neither, so no training slice is a direct
    neighbour of a held-out one. Training samples are centred on every other slice that holds
    lung (the 2.5D input still shows a training slice's neighbours).

The real nodule (:data:`REAL_NODULE`)
    Found by looking at lung-window renderings (-1000 to 200 HU) of every slice, then zooming
    in: a lobulated solid nodule of about 15 mm in the right lung, beside the mediastinum,
    surrounded by aerated lung, seen on slices 31, 32 and 33 (z = -524.8, -519.8, -514.8 mm)
    and on neither slice 30 nor 34. Thresholding at -450 HU inside the lung mask gives
    in-plane areas of 142 and 169 mm² on slices 31 and 32, centred at (x, y) = (-56.2, 131.7)
    and (-58.1, 130.7) mm. We write its centre down as (-57, 131, -520) mm (LPS). It lies in
    the held-out slices, so the model never saw it: it is an independent check. (No expert
    annotation was available to us; this is our reading of the images.)

Also seen, and left alone
    Slice 37 (z = -494.8 mm) shows a round soft-tissue opacity of about 25 mm abutting the
    mediastinum in the right upper lung, continuous with the mediastinum on slice 38: a vessel
    (superior vena cava or azygos arch) or a juxtamediastinal lesion; we cannot tell, so it is
    :data:`UNCERTAIN_STRUCTURE`, reported separately and never counted as a true positive.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from node.assembly.volume import Volume, load_volume
from training.lung_seg.labels import reference_lung_mask

__all__ = [
    "GUARD",
    "HELD_OUT",
    "LIDC",
    "REAL_NODULE",
    "REAL_NODULE_SLICES",
    "UNCERTAIN_STRUCTURE",
    "Series",
    "load_series",
    "training_slices",
]

LIDC = "fnndsc-data/LIDC-IDRI-0314_CT_chest_every5th_slice"
HELD_OUT = tuple(range(28, 39))
GUARD = (27, 39)
REAL_NODULE: tuple[float, float, float] = (-57.0, 131.0, -520.0)
REAL_NODULE_SLICES = (31, 32, 33)
UNCERTAIN_STRUCTURE: tuple[float, float, float] = (-76.0, 160.0, -494.8)


@dataclass(frozen=True, slots=True)
class Series:
    """The chest CT and its reference lung mask (holes filled: vessels and nodules are lung)."""

    volume: Volume
    lung: npt.NDArray[np.bool_]


def load_series(data: Path) -> Series:
    """Load the LIDC chest CT from the shared data folder with the node's loader.

    Raises
    ------
    FileNotFoundError
        If the series folder is missing.
    """
    folder = data / LIDC
    if not folder.is_dir():
        raise FileNotFoundError(f"series folder not found: {folder}")
    volume = load_volume(sorted(folder.glob("*.dcm")))
    return Series(volume=volume, lung=reference_lung_mask(volume.array, volume.spacing))


def training_slices(series: Series) -> list[int]:
    """Slices training samples are centred on: with lung, not held out, not guards."""
    excluded = set(HELD_OUT) | set(GUARD)
    has_lung = series.lung.any(axis=(1, 2))
    return [int(k) for k in np.flatnonzero(has_lung) if int(k) not in excluded]
