"""TID 1500 Measurement Report writer: findings, measurements and their regions (highdicom)."""

from dicom_sr.tid1500.content import (
    EllipsoidRegion,
    ImageFinding,
    MeasuredValue,
    RoiFinding,
    SegmentReference,
)
from dicom_sr.tid1500.sop import CT_UNSPECIFIED_BODY_REGION, build_measurement_report

__all__ = [
    "CT_UNSPECIFIED_BODY_REGION",
    "EllipsoidRegion",
    "ImageFinding",
    "MeasuredValue",
    "RoiFinding",
    "SegmentReference",
    "build_measurement_report",
]
