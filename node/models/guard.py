"""The intended-use guard: a series is checked against the model card before inference.

:func:`check_intended_use` raises :class:`~node.errors.NotAccepted` with the first reason the
series is outside the card's :class:`~node.models.card.InputContract`, in this order: modality,
body part, number of slices, orientation, matrix, pixel spacing, field of view, slice thickness,
slice spacing, intensities. The job runner records the reason on the job (state ``rejected``)
and never runs the model on the series.

Reasons name DICOM attributes and numbers, never patient data.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from node.assembly.volume import Volume
from node.errors import NotAccepted
from node.models.card import InputContract, Intensity, ModelCard, Range

__all__ = ["check_intended_use", "intensity_sample"]

#: The axis each orientation's slice normal lies along (LPS).
_AXES = {"axial": 2, "coronal": 1, "sagittal": 0}
#: At most this many voxels are looked at for the intensity checks (a regular subsample).
_MAX_SAMPLE = 2_000_000
#: Slices read at a time for the sample.
_SAMPLE_SLAB = 32


def check_intended_use(volume: Volume, card: ModelCard) -> None:
    """Refuse ``volume`` if it is outside what ``card``'s model was made for.

    Parameters
    ----------
    volume
        The assembled series.
    card
        The card of the model version the job would run.

    Raises
    ------
    NotAccepted
        With the reason, e.g. ``"Modality 'MR': lung_seg 1 takes CT"``.
    """
    contract = card.input
    who = f"{card.name} {card.version}"
    for check in (
        _modality,
        _body_part,
        _slices,
        _orientation,
        _matrix,
        _pixel_spacing,
        _field_of_view,
        _slice_thickness,
        _slice_spacing,
    ):
        reason = check(volume, contract)
        if reason is not None:
            raise NotAccepted(f"{reason} ({who} is made for {_made_for(contract)})")
    if contract.intensity is not None:
        reason = _intensity(volume, contract.intensity)
        if reason is not None:
            raise NotAccepted(f"{reason} ({who} is made for {_made_for(contract)})")


def _made_for(contract: InputContract) -> str:
    parts = ["/".join(contract.modalities)]
    if contract.orientation != "any":
        parts.insert(0, contract.orientation)
    if contract.body_parts:
        parts.append("of " + "/".join(contract.body_parts))
    return " ".join(parts)


def _modality(volume: Volume, contract: InputContract) -> str | None:
    modality = volume.modality.strip().upper()
    if modality in contract.modalities:
        return None
    return f"Modality {modality!r} is not {' or '.join(contract.modalities)}"


def _body_part(volume: Volume, contract: InputContract) -> str | None:
    if not contract.body_parts:
        return None
    stated = str(volume.datasets[0].get("BodyPartExamined", "") or "").strip().upper()
    if not stated:
        return "BodyPartExamined is absent" if contract.body_part_required else None
    if stated in contract.body_parts:
        return None
    return f"BodyPartExamined {stated!r} is not {' or '.join(contract.body_parts)}"


def _slices(volume: Volume, contract: InputContract) -> str | None:
    count = volume.shape[0]
    if contract.slices.contains(count):
        return None
    return f"{count} slice(s), the card wants {contract.slices.describe()}"


def _orientation(volume: Volume, contract: InputContract) -> str | None:
    if contract.orientation == "any":
        return None
    normal = np.asarray(volume.direction, dtype=np.float64)[:, 2]
    cosine = abs(float(normal[_AXES[contract.orientation]])) / max(
        float(np.linalg.norm(normal)), 1e-9
    )
    angle = math.degrees(math.acos(min(cosine, 1.0)))
    if angle <= contract.max_obliquity_deg:
        return None
    return (
        f"the slice normal is {angle:.0f} deg from the {contract.orientation} axis "
        f"(at most {contract.max_obliquity_deg:g} deg)"
    )


def _matrix(volume: Volume, contract: InputContract) -> str | None:
    if contract.matrix is None:
        return None
    rows, cols = volume.shape[1:]
    if contract.matrix.contains(rows) and contract.matrix.contains(cols):
        return None
    return f"slices of {rows}x{cols} pixels, the card wants {contract.matrix.describe()} a side"


def _pixel_spacing(volume: Volume, contract: InputContract) -> str | None:
    if contract.pixel_spacing_mm is None:
        return None
    row_mm, col_mm = volume.spacing[1], volume.spacing[2]
    if contract.pixel_spacing_mm.contains(row_mm) and contract.pixel_spacing_mm.contains(col_mm):
        return None
    return (
        f"PixelSpacing {row_mm:g}\\{col_mm:g} mm, the card wants "
        f"{contract.pixel_spacing_mm.describe('mm')}"
    )


def _field_of_view(volume: Volume, contract: InputContract) -> str | None:
    if contract.field_of_view_mm is None:
        return None
    fov = volume.shape[2] * volume.spacing[2]
    if contract.field_of_view_mm.contains(fov):
        return None
    return f"field of view {fov:.0f} mm, the card wants {contract.field_of_view_mm.describe('mm')}"


def _slice_thickness(volume: Volume, contract: InputContract) -> str | None:
    wanted = contract.slice_thickness_mm
    if wanted is None:
        return None
    values = sorted(
        {float(ds.SliceThickness) for ds in volume.datasets if ds.get("SliceThickness")}
    )
    if not values and volume.shape[0] > 1:
        values = [volume.spacing[0]]  # no SliceThickness: the distance between slices stands in
    outside = [v for v in values if not wanted.contains(v)]
    if not outside:
        return None
    shown = ", ".join(f"{v:g}" for v in outside[:3])
    return f"SliceThickness {shown} mm, the card wants {wanted.describe('mm')}"


def _slice_spacing(volume: Volume, contract: InputContract) -> str | None:
    wanted = contract.slice_spacing_mm
    if wanted is None or volume.shape[0] < 2:
        return None
    if wanted.contains(volume.spacing[0]):
        return None
    return f"slice spacing {volume.spacing[0]:g} mm, the card wants {wanted.describe('mm')}"


def intensity_sample(volume: Volume) -> npt.NDArray[np.float32]:
    """A regular subsample of at most about two million voxels (every n-th row and column of
    every slice), read a slab at a time."""
    slices, rows, cols = volume.shape
    step = max(1, math.ceil(math.sqrt(slices * rows * cols / _MAX_SAMPLE)))
    parts = [slab[:, ::step, ::step].copy() for _, slab in volume.slabs(_SAMPLE_SLAB)]
    return np.concatenate(parts) if parts else np.empty((0, 0, 0), dtype=np.float32)


def _intensity(volume: Volume, intensity: Intensity) -> str | None:
    sample = intensity_sample(volume)
    if sample.size == 0:
        return "no voxels"
    low, high = (float(v) for v in np.percentile(sample, [1, 99]))
    wanted: Range | None = intensity.percentiles
    if wanted is not None and not (wanted.contains(low) and wanted.contains(high)):
        return (
            f"intensities do not look like {intensity.units}: 1st-99th percentiles "
            f"{low:.0f} to {high:.0f}, the card wants {wanted.describe(intensity.units)}"
        )
    for band in intensity.bands:
        inside = np.ones(sample.shape, dtype=bool)
        if band.low is not None:
            inside &= sample >= band.low
        if band.high is not None:
            inside &= sample <= band.high
        fraction = float(inside.mean())
        if fraction < band.min_fraction:
            return (
                f"intensities do not look like {intensity.units}: {fraction:.1%} of voxels in "
                f"the {band.name} band ({_band(band.low, band.high, intensity.units)}), the card "
                f"wants at least {band.min_fraction:.0%}"
            )
    return None


def _band(low: float | None, high: float | None, units: str) -> str:
    if low is None:
        return f"<= {high:g} {units}"
    if high is None:
        return f">= {low:g} {units}"
    return f"{low:g} to {high:g} {units}"
