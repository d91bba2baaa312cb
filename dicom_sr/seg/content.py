"""Inputs that describe one segment of a DICOM Segmentation."""

from __future__ import annotations

from dataclasses import dataclass

import highdicom as hd
from pydicom.sr.coding import Code

from dicom_sr._common import AlgorithmIdentification

__all__ = ["SegmentSpec"]

_LO_MAX_CHARS = 64  # DICOM PS3.5 Table 6.2-1, VR LO (SegmentLabel, TrackingID)


@dataclass(frozen=True, slots=True)
class SegmentSpec:
    """One segment of a label map, described with coded concepts.

    Parameters
    ----------
    label
        The value that marks this segment's pixels in the label map (a positive integer).
    label_name
        Human-readable SegmentLabel, e.g. ``"Lung"`` (VR LO, at most 64 characters).
    category
        SegmentedPropertyCategoryCodeSequence, from CID 7150, e.g. ``codes.SCT.Organ``.
    property_type
        SegmentedPropertyTypeCodeSequence, from CID 7151 and related, e.g. ``codes.SCT.Lung``.
    tracking_id
        TrackingID: a stable, human-readable identifier of the tracked finding
        (VR LO, at most 64 characters); the TrackingUID is derived from it.
    recommended_rgb
        Display colour as 8-bit sRGB ``(r, g, b)``; always written as
        RecommendedDisplayCIELabValue (viewers such as OHIF warn when it is missing).
    """

    label: int
    label_name: str
    category: Code
    property_type: Code
    tracking_id: str
    recommended_rgb: tuple[int, int, int]

    def __post_init__(self) -> None:
        if isinstance(self.label, bool) or not isinstance(self.label, int) or self.label < 1:
            raise ValueError(f"SegmentSpec.label must be a positive integer, got {self.label!r}")
        for attribute, value in (
            ("label_name", self.label_name),
            ("tracking_id", self.tracking_id),
        ):
            if not value.strip():
                raise ValueError(f"SegmentSpec.{attribute} must not be empty")
            if len(value) > _LO_MAX_CHARS:
                raise ValueError(
                    f"SegmentSpec.{attribute} is {len(value)} characters long; VR LO allows at "
                    f"most {_LO_MAX_CHARS}"
                )
            if "\\" in value or any(ord(c) < 32 for c in value):
                raise ValueError(
                    f"SegmentSpec.{attribute} {value!r} contains a backslash or a control "
                    "character, which VR LO forbids"
                )
        rgb = self.recommended_rgb
        if len(rgb) != 3 or any(
            isinstance(c, bool) or not isinstance(c, int) or not 0 <= c <= 255 for c in rgb
        ):
            raise ValueError(
                f"SegmentSpec.recommended_rgb must be three integers in 0..255, got {rgb!r}"
            )

    def to_description(
        self,
        *,
        segment_number: int,
        algorithm: AlgorithmIdentification,
        tracking_uid: str,
    ) -> hd.seg.SegmentDescription:
        """Return the highdicom SegmentDescription of this segment.

        Parameters
        ----------
        segment_number
            The SegmentNumber in the Segmentation (1-based, consecutive).
        algorithm
            The algorithm that produced the segment; written with SegmentAlgorithmType
            AUTOMATIC.
        tracking_uid
            The TrackingUID of the segment.

        Returns
        -------
        highdicom.seg.SegmentDescription
            One item of the SegmentSequence.
        """
        return hd.seg.SegmentDescription(
            segment_number=segment_number,
            segment_label=self.label_name,
            segmented_property_category=self.category,
            segmented_property_type=self.property_type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm.to_sequence(),
            tracking_uid=tracking_uid,
            tracking_id=self.tracking_id,
            display_color=hd.color.CIELabColor.from_rgb(*self.recommended_rgb),
        )
