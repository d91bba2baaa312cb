"""Findings: what a pipeline returns. Typed values, free of DICOM.

``dicom_sr`` turns them into result objects; nothing here knows about SOP classes or UIDs.

A pipeline may return any mix of:

* :class:`LabelMap`: an integer label map on the volume's grid (→ a DICOM SEG);
* :class:`Detection`: one found object (a nodule) with its position, extent, probability,
  measurements and, optionally, its label in one of the label maps (→ a measurement group of a
  TID 1500 Measurement Report, referencing its SEG segment);
* :class:`Classification`: a label for the whole series with its probability (→ an image-level
  measurement group of the same report);
* :class:`HeatMap`: a float map on the volume's slices explaining a decision (→ a Parametric
  Map, written only when the job's rule asks for explanations);
* ``absent``: concepts looked for and not found (→ "Nodule: Absent" in the report), so a
  detector that found nothing still says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "Classification",
    "CodedConcept",
    "Detection",
    "Findings",
    "HeatMap",
    "LabelMap",
    "Measurement",
    "SegmentDescription",
]


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
class Measurement:
    """One numeric measurement: what (coded), its value, its UCUM unit, how it was derived.

    ``derivation`` qualifies a statistic, e.g. ``Mean`` (SCT 373098007) of the attenuation.
    """

    name: CodedConcept
    value: float
    unit: CodedConcept
    derivation: CodedConcept | None = None


@dataclass(frozen=True, slots=True)
class Detection:
    """One object a detector found.

    Attributes
    ----------
    tracking_id
        Stable, human-readable identifier within the job, e.g. ``"nodule-1"``.
    finding_type
        What it is, e.g. Nodule (SCT 27925004).
    finding_site
        Where, e.g. Lung (SCT 39607008); ``None`` when not stated.
    center_mm
        Centroid of its segmentation (or its centre), patient coordinates (LPS, mm).
    extent_mm
        Size of its bounding box along the volume's row direction, column direction and slice
        normal (mm).
    probability
        The detector's score for the object, in ``[0, 1]``.
    measurements
        Its measurements (diameters, volume, mean attenuation, risk score, ...).
    label_map_index, label
        The label map (index into :attr:`Findings.label_maps`) and the label in it that
        segments this object; ``None`` when the detector gives no segmentation.
    """

    tracking_id: str
    finding_type: CodedConcept
    center_mm: tuple[float, float, float]
    extent_mm: tuple[float, float, float]
    probability: float
    measurements: tuple[Measurement, ...] = ()
    finding_site: CodedConcept | None = None
    label_map_index: int | None = None
    label: int | None = None


@dataclass(frozen=True, slots=True)
class Classification:
    """A label for the whole series, e.g. its body region, with the classifier's probability.

    ``probabilities`` holds every class's probability (meaning → value), the chosen one
    included, so a report can show how sure the model was of each.
    """

    tracking_id: str
    concept: CodedConcept
    probability: float
    probabilities: tuple[tuple[CodedConcept, float], ...] = ()


@dataclass(frozen=True, slots=True)
class HeatMap:
    """A float map on the volume's grid, ``(slices, rows, columns)``, explaining a decision.

    Attributes
    ----------
    array
        float32 values in ``[0, 1]`` (higher: the region weighed more in the decision),
        ``(slices, rows, columns)``: one plane per slice of the volume, at the volume's in-plane
        size or a whole fraction of it (e.g. 256x256 on 512x512 slices; pixel areas aligned).
    label
        Short name (DICOM ContentLabel: upper-case letters, digits, underscore; at most 16).
    description
        What it is and how it was made, e.g. ``"Grad-CAM of class Chest (layer features.3)"``.
    method
        The explanation method as a coded concept, e.g. Gradient-weighted class activation
        (DCM 130403) or Saliency (DCM 130404).
    explains
        The output it explains: the tracking id of a detection or classification.
    """

    array: npt.NDArray[np.float32]
    label: str
    description: str
    method: CodedConcept
    explains: str


@dataclass(frozen=True, slots=True)
class Findings:
    """Everything one pipeline run found, with the model name and version that produced it."""

    model_name: str
    model_version: str
    label_maps: tuple[LabelMap, ...] = ()
    detections: tuple[Detection, ...] = ()
    classifications: tuple[Classification, ...] = ()
    heat_maps: tuple[HeatMap, ...] = ()
    absent: tuple[CodedConcept, ...] = ()
