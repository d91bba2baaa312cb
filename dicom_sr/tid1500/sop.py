"""Builder of TID 1500 Measurement Reports: one per job, every finding a measurement group.

Content tree (what highdicom's :class:`highdicom.sr.MeasurementReport` writes)::

    CONTAINER (126000, DCM, "Imaging Measurement Report")          TID 1500
      HAS CONCEPT MOD  Language of Content (en-US)
      HAS OBS CONTEXT  Observer Type = Device; Device Observer UID, Name (the algorithm's),
                       Manufacturer, Model Name ("<name> <version>")
      HAS CONCEPT MOD  Procedure Reported (e.g. LN 25045-6 "CT unspecified body region")
      CONTAINS CONTAINER (126010, DCM, "Imaging Measurements")
        CONTAINS CONTAINER (125007, DCM, "Measurement Group")       TID 1411, per RoiFinding
          Tracking Identifier, Tracking Unique Identifier, Finding Category, Finding,
          Algorithm Name / Version (TID 4019), Finding Site,
          Referenced Segment (the SEG instance + segment + source series) or
          Volume Surface (SCOORD3D ellipsoid + source series),
          NUM measurements (TID 300), each with its UCUM unit, derivation and algorithm
        CONTAINS CONTAINER (125007, DCM, "Measurement Group")       TID 1501, per ImageFinding
          Tracking Identifier, Tracking Unique Identifier, Finding, Algorithm, source image,
          NUM measurements (e.g. Probability)

The SOP class is Comprehensive 3D SR when a finding has 3D coordinates (an ellipsoid), else
Comprehensive SR. Evidence (CurrentRequestedProcedureEvidenceSequence) lists the source series and
every referenced SEG.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import UID

from dicom_sr._common import PACKAGE_NAME, AlgorithmIdentification, derive_uid, software_versions
from dicom_sr.tid1500.content import EllipsoidRegion, ImageFinding, RoiFinding, SegmentReference

__all__ = ["CT_UNSPECIFIED_BODY_REGION", "build_measurement_report"]

#: The default Procedure Reported (CID 100): LN 25045-6.
CT_UNSPECIFIED_BODY_REGION = Code("25045-6", "LN", "CT unspecified body region")
_LO_MAX_CHARS = 64


def build_measurement_report(
    *,
    source_images: Sequence[Dataset],
    algorithm: AlgorithmIdentification,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    series_description: str,
    roi_findings: Sequence[RoiFinding] = (),
    image_findings: Sequence[ImageFinding] = (),
    procedure_reported: Code = CT_UNSPECIFIED_BODY_REGION,
    instance_number: int = 1,
    manufacturer: str = PACKAGE_NAME,
) -> hd.sr.ComprehensiveSR | hd.sr.Comprehensive3DSR:
    """Build the TID 1500 Measurement Report of one job.

    Parameters
    ----------
    source_images
        The series the findings were made on (metadata only). Its patient and study are the
        report's; it is referenced as evidence and from each finding.
    algorithm
        The model (name and version): the report's device observer and every group's and
        measurement's algorithm identification.
    series_instance_uid, sop_instance_uid
        The report's UIDs (derive them from the job). Tracking UIDs derive from the SOP
        Instance UID and each finding's tracking id, so a retried job writes the same report.
    series_number, series_description
        The report's series number and description (VR LO, at most 64 characters).
    roi_findings
        Findings with a region (a SEG segment or an ellipsoid): TID 1411 groups.
    image_findings
        Findings about the images as a whole (classifications): TID 1501 groups.
    procedure_reported
        CID 100 code of the imaging procedure; CT unspecified body region by default.
    instance_number
        The report's InstanceNumber.
    manufacturer
        Manufacturer of the device (this node).

    Returns
    -------
    highdicom.sr.ComprehensiveSR or highdicom.sr.Comprehensive3DSR
        A complete, final, unverified SR; save it with ``save_as``.

    Raises
    ------
    ValueError
        If there are no source images or no findings (TID 1500 needs at least one group: say
        "nothing found" with an :class:`ImageFinding` whose qualitative evaluation is
        ``(finding type, Absent)``), tracking ids repeat, a UID or the description is
        invalid, or a referenced segment is not in its segmentation.
    """
    if not source_images:
        raise ValueError("build_measurement_report needs the source series' images")
    if not roi_findings and not image_findings:
        raise ValueError("a Measurement Report needs at least one finding (or one saying none)")
    tracking_ids = [f.tracking_id for f in roi_findings] + [f.tracking_id for f in image_findings]
    repeated = sorted({t for t in tracking_ids if tracking_ids.count(t) > 1})
    if repeated:
        raise ValueError(f"tracking ids repeat: {repeated}; each finding needs its own")
    for name, uid in (("series_instance_uid", series_instance_uid), ("sop", sop_instance_uid)):
        if not UID(uid).is_valid:
            raise ValueError(f"{name} {uid!r} is not a valid DICOM UID")
    if not series_description.strip() or len(series_description) > _LO_MAX_CHARS:
        raise ValueError(f"series_description must be 1 to 64 characters: {series_description!r}")

    algorithm_id = hd.sr.AlgorithmIdentification(name=algorithm.name, version=algorithm.version)
    groups: list[
        hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
        | hd.sr.MeasurementsAndQualitativeEvaluations
    ] = []
    segmentations: dict[str, Dataset] = {}
    for finding in roi_findings:
        groups.append(_roi_group(finding, sop_instance_uid, algorithm_id))
        if isinstance(finding.region, SegmentReference):
            seg = finding.region.segmentation
            segmentations[str(seg.SOPInstanceUID)] = seg
    groups.extend(_image_group(f, sop_instance_uid, algorithm_id) for f in image_findings)

    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_device_context=_device_observer(algorithm, manufacturer)
        ),
        procedure_reported=procedure_reported,
        imaging_measurements=groups,
        title=codes.DCM.ImagingMeasurementReport,
    )
    three_d = any(isinstance(f.region, EllipsoidRegion) for f in roi_findings)
    sop_class = hd.sr.Comprehensive3DSR if three_d else hd.sr.ComprehensiveSR
    with warnings.catch_warnings():
        # highdicom warns about dubious source values (a one-part PatientName) quoting them.
        warnings.simplefilter("ignore", UserWarning)
        sr: hd.sr.ComprehensiveSR | hd.sr.Comprehensive3DSR = sop_class(
            evidence=[*source_images, *segmentations.values()],
            content=report[0],
            series_instance_uid=series_instance_uid,
            series_number=series_number,
            sop_instance_uid=sop_instance_uid,
            instance_number=instance_number,
            manufacturer=manufacturer,
            is_complete=True,
            is_final=True,
            is_verified=False,
            record_evidence=True,
            series_description=series_description,
            software_versions=software_versions(),
        )
    return sr


def _device_observer(
    algorithm: AlgorithmIdentification, manufacturer: str
) -> hd.sr.ObserverContext:
    return hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derive_uid("device", algorithm.name, algorithm.version),
            name=algorithm.name,
            manufacturer_name=manufacturer,
            model_name=f"{algorithm.name} {algorithm.version}"[:_LO_MAX_CHARS],
        ),
    )


def _tracking(
    finding: RoiFinding | ImageFinding, sop_instance_uid: str
) -> hd.sr.TrackingIdentifier:
    return hd.sr.TrackingIdentifier(
        uid=derive_uid(sop_instance_uid, "tracking", finding.tracking_id),
        identifier=finding.tracking_id,
    )


def _roi_group(
    finding: RoiFinding, sop_instance_uid: str, algorithm_id: hd.sr.AlgorithmIdentification
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    segment = finding.region.to_content() if isinstance(finding.region, SegmentReference) else None
    surface = finding.region.to_content() if isinstance(finding.region, EllipsoidRegion) else None
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(finding, sop_instance_uid),
        referenced_segment=segment,
        referenced_volume_surface=surface,
        finding_type=finding.finding_type,
        finding_category=finding.finding_category,
        finding_sites=(
            [hd.sr.FindingSite(finding.finding_site)] if finding.finding_site is not None else None
        ),
        algorithm_id=algorithm_id,
        measurements=[m.to_measurement(algorithm_id) for m in finding.measurements],
    )


def _image_group(
    finding: ImageFinding, sop_instance_uid: str, algorithm_id: hd.sr.AlgorithmIdentification
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    sources = [
        hd.sr.SourceImageForMeasurementGroup(
            referenced_sop_class_uid=str(image.SOPClassUID),
            referenced_sop_instance_uid=str(image.SOPInstanceUID),
        )
        for image in finding.source_images
    ]
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(finding, sop_instance_uid),
        finding_type=finding.finding_type,
        finding_category=finding.finding_category,
        algorithm_id=algorithm_id,
        measurements=[m.to_measurement(algorithm_id) for m in finding.measurements],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=name, value=value)
            for name, value in finding.qualitative
        ],
        source_images=sources or None,
    )
