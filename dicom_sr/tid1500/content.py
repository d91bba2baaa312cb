"""Inputs of a TID 1500 Measurement Report: findings, their measurements and regions."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

__all__ = [
    "EllipsoidRegion",
    "ImageFinding",
    "MeasuredValue",
    "RoiFinding",
    "SegmentReference",
]

_LO_MAX_CHARS = 64  # DICOM PS3.5 Table 6.2-1, VR LO (Tracking Identifier is TEXT, kept short)


def _abnormal() -> Code:
    return codes.SCT.MorphologicallyAbnormalStructure  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class MeasuredValue:
    """One numeric measurement of a finding (TID 300).

    Parameters
    ----------
    name
        What was measured, e.g. ``codes.SCT.LongAxis`` or ``codes.SCT.Volume``.
    value
        The number (finite).
    unit
        Its UCUM unit, e.g. ``Code("mm", "UCUM", "millimeter")``.
    derivation
        How a statistic was derived, e.g. ``codes.SCT.Mean`` for a mean attenuation.
    """

    name: Code
    value: float
    unit: Code
    derivation: Code | None = None

    def __post_init__(self) -> None:
        if not math.isfinite(self.value):
            raise ValueError(f"MeasuredValue {self.name.meaning!r} is not finite: {self.value}")
        if self.unit.scheme_designator != "UCUM":
            raise ValueError(
                f"MeasuredValue {self.name.meaning!r}: the unit must be a UCUM code, got "
                f"scheme {self.unit.scheme_designator!r}"
            )

    def to_measurement(self, algorithm: hd.sr.AlgorithmIdentification) -> hd.sr.Measurement:
        """The TID 300 Measurement content of this value, attributed to ``algorithm``."""
        return hd.sr.Measurement(
            name=self.name,
            value=self.value,
            unit=self.unit,
            derivation=self.derivation,
            algorithm_id=algorithm,
        )


@dataclass(frozen=True, slots=True)
class SegmentReference:
    """A segment of a DICOM SEG (written for the same job) that delineates the finding.

    Parameters
    ----------
    segmentation
        The SEG instance (e.g. what :func:`dicom_sr.seg.build_segmentation` returned).
    segment_number
        The segment's SegmentNumber in it.
    """

    segmentation: Dataset
    segment_number: int

    def to_content(self) -> hd.sr.ReferencedSegment:
        """The Referenced Segment content item (with its source series).

        Raises
        ------
        ValueError
            If the segmentation has no such segment, or references more than one series.
        """
        numbers = {int(item.SegmentNumber) for item in self.segmentation.SegmentSequence}
        if self.segment_number not in numbers:
            raise ValueError(
                f"segment {self.segment_number} is not in the segmentation (it has "
                f"{sorted(numbers)})"
            )
        # Built by hand: highdicom's ``from_segmentation`` looks for the segment number in
        # every frame's functional groups, where a one-segment SEG does not put it.
        [series] = self.segmentation.ReferencedSeriesSequence
        return hd.sr.ReferencedSegment(
            sop_class_uid=str(self.segmentation.SOPClassUID),
            sop_instance_uid=str(self.segmentation.SOPInstanceUID),
            segment_number=self.segment_number,
            source_series=hd.sr.SourceSeriesForSegmentation(str(series.SeriesInstanceUID)),
        )


@dataclass(frozen=True, slots=True)
class EllipsoidRegion:
    """An ellipsoid in patient space that holds the finding, when no segmentation is given.

    Parameters
    ----------
    center_mm
        Its centre, patient coordinates (LPS, mm).
    semi_axes_mm
        Three mutually perpendicular half-axis vectors (mm), the longest first.
    frame_of_reference_uid
        The Frame of Reference of the coordinates (the source series').
    source_series_uid
        The series the region was found in.
    """

    center_mm: tuple[float, float, float]
    semi_axes_mm: tuple[
        tuple[float, float, float], tuple[float, float, float], tuple[float, float, float]
    ]
    frame_of_reference_uid: str
    source_series_uid: str

    def to_content(self) -> hd.sr.VolumeSurface:
        """The Volume Surface content (SCOORD3D ELLIPSOID) with its source series."""
        center = np.asarray(self.center_mm, dtype=np.float64)
        points = []
        for axis in self.semi_axes_mm:
            vector = np.asarray(axis, dtype=np.float64)
            points.extend([center - vector, center + vector])
        return hd.sr.VolumeSurface(
            graphic_type=hd.sr.GraphicTypeValues3D.ELLIPSOID,
            graphic_data=np.array(points),
            frame_of_reference_uid=self.frame_of_reference_uid,
            source_series=hd.sr.SourceSeriesForSegmentation(self.source_series_uid),
        )


def _check_tracking_id(tracking_id: str) -> None:
    if not tracking_id.strip() or len(tracking_id) > _LO_MAX_CHARS:
        raise ValueError(f"tracking id must be 1 to {_LO_MAX_CHARS} characters: {tracking_id!r}")
    if any(ord(c) < 32 for c in tracking_id):
        raise ValueError(f"tracking id {tracking_id!r} contains a control character")


@dataclass(frozen=True, slots=True)
class RoiFinding:
    """A finding with a region: a TID 1411 Volumetric ROI measurement group.

    Parameters
    ----------
    tracking_id
        Human-readable, unique within the report, e.g. ``"nodule-1"``; its Tracking UID is
        derived from it and the report's SOP Instance UID.
    finding_type
        What it is, e.g. ``codes.SCT.Nodule``.
    region
        Where it is: a SEG segment or, without one, an ellipsoid in patient space.
    measurements
        Its measurements.
    finding_category
        CID 7150 category; Morphologically Abnormal Structure by default.
    finding_site
        Where in the body, e.g. ``codes.SCT.Lung``.
    """

    tracking_id: str
    finding_type: Code
    region: SegmentReference | EllipsoidRegion
    measurements: Sequence[MeasuredValue] = ()
    finding_category: Code = field(default_factory=_abnormal)
    finding_site: Code | None = None

    def __post_init__(self) -> None:
        _check_tracking_id(self.tracking_id)


@dataclass(frozen=True, slots=True)
class ImageFinding:
    """A finding about the images as a whole (no region): a TID 1501 measurement group.

    Used for classifications: ``finding_type`` is the class (e.g. ``codes.SCT.Chest`` for the
    body region), and ``measurements`` its probability; and for "nothing found":
    ``finding_type`` Nodule with the qualitative evaluation ``(Nodule, Absent)``.

    Parameters
    ----------
    tracking_id
        Human-readable, unique within the report.
    finding_type
        The finding (the class chosen).
    measurements
        Its measurements, e.g. Probability (DCM 122157) in UCUM ``1``.
    finding_category
        CID 7150 category, if any.
    source_images
        The images the finding is about (referenced from the group); the report's evidence
        lists all of them anyway.
    qualitative
        Coded ``(name, value)`` evaluations, e.g. ``(codes.SCT.Nodule, codes.SCT.Absent)``.
    """

    tracking_id: str
    finding_type: Code
    measurements: Sequence[MeasuredValue] = ()
    finding_category: Code | None = None
    source_images: Sequence[Dataset] = ()
    qualitative: Sequence[tuple[Code, Code]] = ()

    def __post_init__(self) -> None:
        _check_tracking_id(self.tracking_id)
