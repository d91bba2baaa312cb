"""Inputs of a Parametric Map: one explanation heat map and what it means."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydicom.sr.coding import Code

__all__ = ["HeatMapSpec"]

_CONTENT_LABEL = re.compile(r"^[A-Z0-9_ ]{1,16}$")  # VR CS, at most 16 characters
_LO_MAX_CHARS = 64


@dataclass(frozen=True, slots=True)
class HeatMapSpec:
    """A heat map to write as a Parametric Map.

    Parameters
    ----------
    array
        ``(slices, rows, columns)`` float values in ``[0, 1]``, one plane per source image (in
        the same order). ``rows`` and ``columns`` are the source's or a whole fraction of them
        (e.g. 256x256 on 512x512 images): plane pixel ``(i, j)`` then covers the source pixels
        ``f*i .. f*i + f - 1`` (areas aligned).
    content_label
        ContentLabel (upper-case letters, digits, space, underscore; at most 16), also the
        real-world value mapping's LUT label, e.g. ``"OCCLUSION"``.
    description
        What it is and how it was made (at most 64 characters), e.g. ``"Occlusion sensitivity
        of nodule-1"``: the mapping's LUT explanation.
    method
        The quantity, as a code, e.g. Saliency (DCM 130404) or Gradient-weighted class
        activation (DCM 130403): the mapping's quantity definition.
    """

    array: npt.NDArray[np.floating]
    content_label: str
    description: str
    method: Code

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"HeatMapSpec.array must be 3D, got shape {self.array.shape}")
        if not np.isfinite(self.array).all():
            raise ValueError("HeatMapSpec.array holds NaN or infinite values")
        low, high = float(self.array.min()), float(self.array.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(f"HeatMapSpec.array must lie in [0, 1], got {low:g} to {high:g}")
        if not _CONTENT_LABEL.match(self.content_label):
            raise ValueError(
                f"content_label {self.content_label!r}: upper-case letters, digits, space and "
                "underscore, at most 16"
            )
        if not self.description.strip() or len(self.description) > _LO_MAX_CHARS:
            raise ValueError(f"description must be 1 to 64 characters: {self.description!r}")
