"""The slices ``ct_region`` trains and is evaluated on, and where each label comes from.

Classes: head, chest, abdomen (:data:`node.pipelines.ct_region.CLASSES`). Labels come from the
series' headers and, for the chest CT that also shows the upper abdomen, from its images:

``dcm_qa_ct/GE_HiSpeedDual_head_CT_gantry_tilt_variable_spacing`` (28 slices)
    **head**: BodyPartExamined HEAD, a trauma head CT (MANIFEST 1b). Every slice.
``totalsegmentator/example_ct_dicom_CT_Body_abdomen_J2K`` (20 slices)
    **abdomen**: "CT Body", a contrast upper-abdomen crop (liver, stomach, spleen; MANIFEST 1c).
    Every slice.
``fnndsc-data/LIDC-IDRI-0314_CT_chest_every5th_slice`` (55 slices)
    BodyPartExamined CHEST, but it runs from the liver dome to above the lung apices, so each
    slice is labelled from the reference lung mask (``training.lung_seg.labels``): **chest**
    when it holds at least :data:`CHEST_MIN_LUNG_CM2` of lung; **abdomen** when it lies below
    the lungs with less than :data:`ABDOMEN_MAX_LUNG_CM2`; left out otherwise (the lung bases
    among the liver, and the neck and shoulders above the apices: neither class fits).

Split: slices ``k`` with ``k % HELD_OUT_EVERY == HELD_OUT_OFFSET`` of every series above are
held out (neighbours of training slices, so optimistic). Independent slices of other patients
and scanners, never trained on (:data:`INDEPENDENT`): the 3 dcmqi CT slices (lung bases:
**chest** by the same lung rule), the pydicom ``J2K_pixelrep_mismatch.dcm`` slice (BodyPart
HEAD: **head**) and the pydicom-data ``explicit_VR-UN.dcm`` slice (BodyPart PANCREAS:
**abdomen**; stored upside down, rows running from back to front).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from node.assembly.volume import Volume, load_volume
from node.pipelines.ct_region import canonical
from training.lung_seg.labels import reference_lung_mask

__all__ = [
    "ABDOMEN",
    "ABDOMEN_MAX_LUNG_CM2",
    "CHEST",
    "CHEST_MIN_LUNG_CM2",
    "HEAD",
    "HELD_OUT_EVERY",
    "HELD_OUT_OFFSET",
    "INDEPENDENT",
    "SERIES",
    "LabelledSlices",
    "load_independent",
    "load_training_series",
]

HEAD, CHEST, ABDOMEN = 0, 1, 2
CHEST_MIN_LUNG_CM2 = 30.0
ABDOMEN_MAX_LUNG_CM2 = 1.0
HELD_OUT_EVERY = 4
HELD_OUT_OFFSET = 1
LIDC = "fnndsc-data/LIDC-IDRI-0314_CT_chest_every5th_slice"
#: Training series and how their slices are labelled: a class for every slice, or ``None``
#: for the lung rule.
SERIES: tuple[tuple[str, int | None], ...] = (
    ("dcm_qa_ct/GE_HiSpeedDual_head_CT_gantry_tilt_variable_spacing", HEAD),
    ("totalsegmentator/example_ct_dicom_CT_Body_abdomen_J2K", ABDOMEN),
    (LIDC, None),
)
#: Independent slices: (file or folder, class or None for the lung rule).
INDEPENDENT: tuple[tuple[str, int | None], ...] = (
    ("dcmqi/ct-3slice_with_SEG/CT", None),
    ("pydicom-3.0.2/test_files/J2K_pixelrep_mismatch.dcm", HEAD),
    ("pydicom-data-1.0.0/data/explicit_VR-UN.dcm", ABDOMEN),
)


@dataclass(frozen=True, slots=True)
class LabelledSlices:
    """Slices of one series in the standard orientation, their labels (-1: left out)."""

    name: str
    volume: Volume
    slices: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int64]


def _load(path: Path) -> Volume:
    files = (
        [path]
        if path.is_file()
        else sorted(p for p in path.iterdir() if p.is_file() and p.suffix not in (".md", ".txt"))
    )
    return load_volume(files)


def _lung_labels(volume: Volume) -> npt.NDArray[np.int64]:
    """Chest, abdomen or left out (-1) per slice, from the reference lung mask."""
    lung = reference_lung_mask(volume.array, volume.spacing)
    area_cm2 = lung.sum(axis=(1, 2)) * volume.spacing[1] * volume.spacing[2] / 100.0
    labels = np.full(len(area_cm2), -1, dtype=np.int64)
    labels[area_cm2 >= CHEST_MIN_LUNG_CM2] = CHEST
    has_lung = np.flatnonzero(area_cm2 >= ABDOMEN_MAX_LUNG_CM2)
    lowest_lung = int(has_lung[0]) if has_lung.size else len(area_cm2)
    labels[:lowest_lung] = ABDOMEN  # below the lungs (slices are sorted feet first)
    return labels


def _labelled(data: Path, relative: str, label: int | None) -> LabelledSlices:
    volume = _load(data / relative)
    slices, _rows, _cols = canonical(volume)
    labels = (
        np.full(len(slices), label, dtype=np.int64) if label is not None else _lung_labels(volume)
    )
    return LabelledSlices(name=relative, volume=volume, slices=slices, labels=labels)


def load_training_series(data: Path) -> list[LabelledSlices]:
    """The three training series, labelled (held-out slices included; split by index)."""
    return [_labelled(data, relative, label) for relative, label in SERIES]


def load_independent(data: Path) -> list[LabelledSlices]:
    """The independent slices of other patients, labelled."""
    return [_labelled(data, relative, label) for relative, label in INDEPENDENT]
