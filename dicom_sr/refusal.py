"""A short Comprehensive SR saying why an AI model produced no result for a series.

Sent instead of a result when a rule asks for it (``explain_refusal``): the radiologist sees, in
the study, that the model was not run and why (e.g. the series is MR and the model takes CT).

Content tree (no template; every item is plain TEXT under one container)::

    CONTAINER (18748-4, LN, "Diagnostic Imaging Report")
      HAS OBS CONTEXT  Observer Type = Device, Device Observer UID / Name / Model Name
                       (the model's name and version)
      CONTAINS TEXT (111001, DCM, "Algorithm Name")     = model name
      CONTAINS TEXT (111003, DCM, "Algorithm Version")  = model version
      CONTAINS TEXT (121073, DCM, "Impression")         = "No AI result: ..."
      CONTAINS TEXT (121106, DCM, "Comment")            = the reason

It references the source series as evidence (CurrentRequestedProcedureEvidenceSequence) and
takes its patient and study from it. UIDs come from the caller (derive them from the job).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.codedict import codes

from dicom_sr._common import PACKAGE_NAME, AlgorithmIdentification, derive_uid, software_versions

__all__ = ["build_refusal_report"]

_UT_MAX_CHARS = 1024  # kept short on purpose: one reason, not a log


def build_refusal_report(
    *,
    source_images: Sequence[Dataset],
    algorithm: AlgorithmIdentification,
    reason: str,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    instance_number: int = 1,
    manufacturer: str = PACKAGE_NAME,
) -> hd.sr.ComprehensiveSR:
    """Build the SR that says ``algorithm`` produced no result for ``source_images``, and why.

    Parameters
    ----------
    source_images
        The refused series (metadata only; PixelData need not be loaded). Its patient, study
        and instances are referenced; the images are never modified.
    algorithm
        The model (name and version) that was not run.
    reason
        Why, in words (no patient data), e.g. ``"Modality 'MR' is not CT"``.
    series_instance_uid, sop_instance_uid
        The SR's UIDs (deterministic, e.g. :func:`dicom_sr.derive_uid` of the job).
    series_number, instance_number
        The SR's numbers.
    manufacturer
        Manufacturer of the "device" (this node).

    Returns
    -------
    highdicom.sr.ComprehensiveSR
        A complete, final, unverified Comprehensive SR.

    Raises
    ------
    ValueError
        If there are no source images or the reason is empty.
    """
    if not source_images:
        raise ValueError("build_refusal_report needs the refused series' images")
    text = " ".join(reason.split())
    if not text:
        raise ValueError("build_refusal_report needs a reason")
    text = text[:_UT_MAX_CHARS]
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derive_uid("device", algorithm.name, algorithm.version),
            name=algorithm.name,
            manufacturer_name=manufacturer,
            model_name=f"{algorithm.name} {algorithm.version}"[:64],
        ),
    )
    root = hd.sr.ContainerContentItem(name=codes.LN.DiagnosticImagingReport)
    items: list[hd.sr.ContentItem] = [*observer]
    for name, value in (
        (codes.DCM.AlgorithmName, algorithm.name),
        (codes.DCM.AlgorithmVersion, algorithm.version),
        (
            codes.DCM.Impression,
            f"No AI result: {algorithm.name} version {algorithm.version} was not run on this "
            "series because it is outside the model's intended use.",
        ),
        (codes.DCM.Comment, text),
    ):
        items.append(hd.sr.TextContentItem(name=name, value=value, relationship_type="CONTAINS"))
    root.ContentSequence = hd.sr.ContentSequence(items, is_root=False)
    with warnings.catch_warnings():
        # highdicom warns about dubious source values (a one-part PatientName) quoting them.
        warnings.simplefilter("ignore", UserWarning)
        return _report(source_images, root, series_instance_uid, sop_instance_uid,
                       series_number, instance_number, manufacturer, algorithm)  # fmt: skip


def _report(
    source_images: Sequence[Dataset],
    root: hd.sr.ContainerContentItem,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    instance_number: int,
    manufacturer: str,
    algorithm: AlgorithmIdentification,
) -> hd.sr.ComprehensiveSR:
    return hd.sr.ComprehensiveSR(
        evidence=list(source_images),
        content=root,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=manufacturer,
        is_complete=True,
        is_final=True,
        is_verified=False,
        record_evidence=True,
        series_description=f"AI {algorithm.name} v{algorithm.version}: no result"[:64],
        software_versions=software_versions(),
    )
