"""Parametric Map writer: explanation heat maps on the source geometry (highdicom)."""

from dicom_sr.pm.content import HeatMapSpec
from dicom_sr.pm.sop import build_parametric_map

__all__ = ["HeatMapSpec", "build_parametric_map"]
