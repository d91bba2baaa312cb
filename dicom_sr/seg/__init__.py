"""DICOM Segmentation (SEG) writer: label maps of a single-frame series to a BINARY SEG."""

from dicom_sr.seg.content import SegmentSpec
from dicom_sr.seg.sop import DEVICE_SERIAL_NUMBER, build_segmentation

__all__ = ["DEVICE_SERIAL_NUMBER", "SegmentSpec", "build_segmentation"]
