"""Which series of the shared data train and evaluate ``lung_seg``, and how they are split.

Everything is read with the node's own Volume loader, so training sees the slices in the order
and the Hounsfield units the node will see.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from node.assembly.volume import Volume, load_volume
from training.lung_seg.labels import reference_lung_mask

__all__ = [
    "EXTRA_TRAINING",
    "HELD_OUT_EVERY",
    "HELD_OUT_OFFSET",
    "LIDC",
    "LabelledSeries",
    "held_out_slices",
    "load_labelled",
    "load_series",
]

#: The main series: one chest CT (TCIA LIDC-IDRI-0314), 55 slices at 5 mm.
LIDC = "fnndsc-data/LIDC-IDRI-0314_CT_chest_every5th_slice"
#: Extra training series, all slices: 3 contiguous lung-base slices of another patient and
#: scanner (GE LightSpeed Ultra). Not evaluated on.
EXTRA_TRAINING = ("dcmqi/ct-3slice_with_SEG/CT",)
#: LIDC slices ``k`` (z order) with ``k % HELD_OUT_EVERY == HELD_OUT_OFFSET`` are held out.
HELD_OUT_EVERY = 5
HELD_OUT_OFFSET = 2


@dataclass(frozen=True, slots=True)
class LabelledSeries:
    """A series with its reference lung mask (see :mod:`training.lung_seg.labels`)."""

    name: str
    volume: Volume
    labels: npt.NDArray[np.bool_]


def load_series(data: Path, relative: str) -> Volume:
    """Load the DICOM files of one series folder of the shared data.

    Parameters
    ----------
    data
        The shared data folder (``../shared/data``).
    relative
        The series folder inside it.

    Returns
    -------
    Volume
        The assembled series.
    """
    folder = data / relative
    if not folder.is_dir():
        raise FileNotFoundError(f"series folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() != ".md")
    return load_volume(files)


def load_labelled(data: Path, relative: str) -> LabelledSeries:
    """Load a series and compute its reference lung mask.

    Parameters
    ----------
    data
        The shared data folder.
    relative
        The series folder inside it.

    Returns
    -------
    LabelledSeries
        The volume and its mask.
    """
    volume = load_series(data, relative)
    return LabelledSeries(relative, volume, reference_lung_mask(volume.array, volume.spacing))


def held_out_slices(slices: int) -> npt.NDArray[np.bool_]:
    """Which of ``slices`` LIDC slices (z order) are held out from training.

    Parameters
    ----------
    slices
        Number of slices in the series.

    Returns
    -------
    numpy.ndarray
        ``(slices,)`` bool, True for held-out slices.
    """
    held_out: npt.NDArray[np.bool_] = np.arange(slices) % HELD_OUT_EVERY == HELD_OUT_OFFSET
    return held_out
