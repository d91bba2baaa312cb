"""Findings: what a pipeline returns. Typed values, free of DICOM.

``dicom_sr`` turns them into result objects; nothing here knows about SOP classes or UIDs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["CodedConcept", "Findings", "LabelMap", "SegmentDescription"]


@dataclass(frozen=True, slots=True)
class CodedConcept:
    """A coded concept: code value, coding scheme designator and meaning (e.g. SCT 39607008)."""

    value: str
    scheme: str
    meaning: str


@dataclass(frozen=True, slots=True)
class SegmentDescription:
    """What one label value of a label map means."""

    label: int
    name: str
    category: CodedConcept
    property_type: CodedConcept
    rgb: tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class LabelMap:
    """An integer label map on the grid of the input volume: ``(slices, rows, columns)``."""

    array: npt.NDArray[np.uint8]
    segments: tuple[SegmentDescription, ...]


@dataclass(frozen=True, slots=True)
class Findings:
    """Everything one pipeline run found, with the model name and version that produced it."""

    model_name: str
    model_version: str
    label_maps: tuple[LabelMap, ...] = ()
