"""Shared helpers of the result-object writers: UIDs, algorithm identity, versions.

Everything here is deterministic: a retried job that passes the same job id and output
name gets the same UIDs, so the PACS sees one object, never a duplicate.
"""

from __future__ import annotations

import importlib.metadata
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import highdicom as hd
from pydicom import Dataset
from pydicom.dataelem import DataElement
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import UID

__all__ = [
    "PACKAGE_NAME",
    "UID_NAMESPACE",
    "AlgorithmIdentification",
    "derive_uid",
    "software_versions",
    "with_frame_of_reference",
]

PACKAGE_NAME = "pacs-ai-node"
"""Distribution name whose installed version is written as SoftwareVersions."""

UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:pacs-ai-node:dicom_sr")
"""Fixed UUID namespace of :func:`derive_uid`; changing it changes every derived UID."""

_UNKNOWN_VERSION = "0+unknown"
_LO_MAX_CHARS = 64  # DICOM PS3.5 Table 6.2-1, VR LO
_FRAME_OF_REFERENCE_UID_TAG = 0x0020_0052


def derive_uid(*parts: str) -> str:
    """Derive a DICOM UID deterministically from its identifying parts.

    The UID is ``"2.25." + str(uuid5(UID_NAMESPACE, "/".join(parts)).int)``, the UUID-derived
    form of DICOM PS3.5 Annex B.2, at most 44 characters long.

    Parameters
    ----------
    *parts
        Strings that together identify the object, e.g. ``(job_id, output_name, "series")``.
        They are joined with ``"/"``, so ``("a/b",)`` and ``("a", "b")`` give the same UID:
        keep ``"/"`` out of the parts when that matters.

    Returns
    -------
    str
        A valid DICOM UID, identical for identical parts.

    Raises
    ------
    ValueError
        If no part is given, or a part is empty.

    Examples
    --------
    >>> derive_uid("job-42", "lung-seg", "instance") == derive_uid("job-42", "lung-seg", "instance")
    True
    """
    if not parts:
        raise ValueError("derive_uid() needs at least one part")
    if any(not isinstance(part, str) or part == "" for part in parts):
        raise ValueError(f"derive_uid() parts must be non-empty strings, got {parts!r}")
    return f"2.25.{uuid.uuid5(UID_NAMESPACE, '/'.join(parts)).int}"


def software_versions() -> str:
    """Return the installed ``pacs-ai-node`` version, for the SoftwareVersions attribute.

    Returns
    -------
    str
        The distribution's version, or ``"0+unknown"`` when the package is not installed
        (e.g. running from a source tree without ``pip install -e``).
    """
    try:
        return importlib.metadata.version(PACKAGE_NAME)
    except importlib.metadata.PackageNotFoundError:
        return _UNKNOWN_VERSION


def _ai_family() -> Code:
    return codes.DCM.ArtificialIntelligence  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class AlgorithmIdentification:
    """The algorithm (model) that produced a result, as written in every result object.

    Parameters
    ----------
    name
        Algorithm name, e.g. the model name in the model repository (VR LO, at most 64
        characters).
    version
        Algorithm version, e.g. the model version (VR LO, at most 64 characters).
    family
        Algorithm family, from CID 7162; defaults to ``(123110, DCM, "Artificial
        Intelligence")``.
    source
        Optional source of the algorithm, e.g. who trained it (VR LO).
    """

    name: str
    version: str
    family: Code = field(default_factory=_ai_family)
    source: str | None = None

    def __post_init__(self) -> None:
        for attribute, value in (("name", self.name), ("version", self.version)):
            if not value or not value.strip():
                raise ValueError(f"AlgorithmIdentification.{attribute} must not be empty")
        for attribute, maybe in (
            ("name", self.name),
            ("version", self.version),
            ("source", self.source),
        ):
            if maybe is not None and len(maybe) > _LO_MAX_CHARS:
                raise ValueError(
                    f"AlgorithmIdentification.{attribute} is {len(maybe)} characters long; "
                    f"VR LO allows at most {_LO_MAX_CHARS}"
                )
            if maybe is not None and ("\\" in maybe or any(ord(c) < 32 for c in maybe)):
                raise ValueError(
                    f"AlgorithmIdentification.{attribute} {maybe!r} contains a backslash or "
                    "a control character, which VR LO forbids"
                )

    def to_sequence(self) -> hd.AlgorithmIdentificationSequence:
        """Return the highdicom Algorithm Identification Sequence for this algorithm.

        Returns
        -------
        highdicom.AlgorithmIdentificationSequence
            One item with AlgorithmName, AlgorithmVersion, AlgorithmFamilyCodeSequence and,
            when given, AlgorithmSource.
        """
        return hd.AlgorithmIdentificationSequence(
            name=self.name,
            family=self.family,
            version=self.version,
            source=self.source,
        )


def with_frame_of_reference(
    source_images: Sequence[Dataset], frame_of_reference_uid: str | None
) -> Sequence[Dataset]:
    """Return the sources an object is built from, applying the Frame of Reference policy.

    Parameters
    ----------
    source_images
        The source series.
    frame_of_reference_uid
        ``None``: every image must carry the same FrameOfReferenceUID (else ``ValueError``),
        and the images are returned as they are. A UID: shallow copies of the images whose
        FrameOfReferenceUID is this value (the caller's datasets are left untouched); see
        :func:`dicom_sr.seg.build_segmentation` for when and why.

    Returns
    -------
    Sequence[pydicom.Dataset]
        The images to build from.
    """
    if frame_of_reference_uid is None:
        values = {image.get("FrameOfReferenceUID") for image in source_images}
        if len(values) != 1:
            raise ValueError(
                f"source_images disagree on FrameOfReferenceUID ({len(values)} distinct "
                "values); pass frame_of_reference_uid to declare the one the Segmentation "
                "uses"
            )
        return source_images
    if not UID(frame_of_reference_uid).is_valid:
        raise ValueError(
            f"frame_of_reference_uid {frame_of_reference_uid!r} is not a valid DICOM UID"
        )
    copies = []
    for image in source_images:
        # Dataset(image) and copy.copy(image) share the element dict with the caller's
        # dataset: build a new dict, and replace (never assign into) the shared element.
        copy = Dataset(dict(image.items()))
        if hasattr(image, "file_meta"):
            copy.file_meta = image.file_meta
        copy[_FRAME_OF_REFERENCE_UID_TAG] = DataElement(
            _FRAME_OF_REFERENCE_UID_TAG, "UI", frame_of_reference_uid
        )
        copies.append(copy)
    return copies
