"""Parametric Map writer: explanation heat maps on the source geometry (highdicom)."""

from dicom_sr.pm.content import HeatMapSpec
from dicom_sr.pm.sop import STORED_MAX, build_parametric_map

__all__ = ["STORED_MAX", "HeatMapSpec", "build_parametric_map"]
