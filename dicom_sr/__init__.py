"""Writers and validators of the node's result objects (DICOM SEG, ...), built on highdicom.

This package imports pydicom, highdicom and numpy only, never ``node``.
"""

from dicom_sr._common import (
    PACKAGE_NAME,
    UID_NAMESPACE,
    AlgorithmIdentification,
    derive_uid,
    software_versions,
)
from dicom_sr.seg import SegmentSpec, build_segmentation
from dicom_sr.validate import DciodvfyNotInstalledError, dciodvfy_errors, dciodvfy_messages

__all__ = [
    "PACKAGE_NAME",
    "UID_NAMESPACE",
    "AlgorithmIdentification",
    "DciodvfyNotInstalledError",
    "SegmentSpec",
    "build_segmentation",
    "dciodvfy_errors",
    "dciodvfy_messages",
    "derive_uid",
    "software_versions",
]
