"""Turns a pipeline's Findings into result objects (via dicom_sr) and writes them to the spool.

One job may write several objects, in this order (each its own series):

``seg<i>``
    A DICOM-SEG per label map (:attr:`Findings.label_maps`).
``sr``
    A TID 1500 Measurement Report when the findings hold detections, classifications or say
    that nothing was found (:attr:`Findings.absent`): one measurement group per detection
    (referencing its segment in the SEG above), per classification, or per concept absent.
``pm<i>``
    A Parametric Map per heat map (:attr:`Findings.heat_maps`), only when the job's rule asks
    for explanations.

Every UID derives from ``(job UID, output name)`` only, so a job run twice writes the same
objects and the PACS keeps one copy of each; two jobs never share one.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom import Dataset
from pydicom.sr.coding import Code

from dicom_sr import AlgorithmIdentification, derive_uid
from dicom_sr.pm import HeatMapSpec, build_parametric_map
from dicom_sr.refusal import build_refusal_report
from dicom_sr.seg import SegmentSpec, build_segmentation
from dicom_sr.tid1500 import (
    ImageFinding,
    MeasuredValue,
    RoiFinding,
    SegmentReference,
    build_measurement_report,
)
from node.assembly.volume import Volume
from node.pipelines.findings import CodedConcept, Detection, Findings, Measurement
from node.store.spool import Spool

__all__ = ["ResultFile", "write_refusal", "write_results"]

_MAX_DESCRIPTION = 64  # SeriesDescription, VR LO


@dataclass(frozen=True, slots=True)
class ResultFile:
    """One result object written to the spool (spool-relative path) and its SOP Instance UID."""

    path: str
    sop_instance_uid: str


def _code(concept: CodedConcept) -> Code:
    return Code(concept.value, concept.scheme, concept.meaning)


def _measured(measurement: Measurement) -> MeasuredValue:
    return MeasuredValue(
        name=_code(measurement.name),
        value=measurement.value,
        unit=_code(measurement.unit),
        derivation=None if measurement.derivation is None else _code(measurement.derivation),
    )


def _description(findings: Findings, suffix: str = "") -> str:
    return f"AI {findings.model_name} v{findings.model_version}{suffix}"[:_MAX_DESCRIPTION]


class _Writer:
    """Writes the objects of one job, numbering their series in the order written."""

    def __init__(self, job_uid: str, spool: Spool, series_number: int, prefix: str) -> None:
        self.job_uid = job_uid
        self.spool = spool
        self.next_series = series_number
        self.prefix = prefix
        self.written: list[ResultFile] = []

    def uids(self, output: str) -> tuple[str, str, str]:
        """``(output name, series UID, SOP Instance UID)`` of ``output``."""
        name = f"{self.prefix}{output}"
        return (
            name,
            derive_uid(self.job_uid, name, "series"),
            derive_uid(self.job_uid, name, "instance"),
        )

    def series_number(self) -> int:
        number = self.next_series
        self.next_series += 1
        return number

    def save(self, name: str, dataset: Dataset) -> None:
        relative = self.spool.result_path(self.job_uid, name)
        with self.spool.writing(relative) as handle:
            dataset.save_as(handle, enforce_file_format=True)
        self.written.append(ResultFile(str(relative), str(dataset.SOPInstanceUID)))


def write_results(
    findings: Findings,
    volume: Volume,
    *,
    job_uid: str,
    spool: Spool,
    series_number: int,
    output_prefix: str = "",
    explain: bool = False,
) -> list[ResultFile]:
    """Write the job's result objects (see the module docs); return them in order.

    Objects are written in the Frame of Reference of the first source slice in sorted order
    (:attr:`Volume.frame_of_reference_uid`), which is the source's own when it is consistent.

    Parameters
    ----------
    findings
        What the pipeline found.
    volume
        The source series.
    job_uid
        The job's UID, from which every UID derives.
    spool
        Where the files go.
    series_number
        The first object's SeriesNumber; the others follow.
    output_prefix
        Prepended to every output name (a shadow version's ``"shadow-"``: its UIDs and files
        never collide with the job's own).
    explain
        Whether to write the heat maps as Parametric Maps.
    """
    algorithm = AlgorithmIdentification(name=findings.model_name, version=findings.model_version)
    writer = _Writer(job_uid, spool, series_number, output_prefix)
    segmentations: list[Dataset] = []
    for index, label_map in enumerate(findings.label_maps):
        name, series_uid, sop_uid = writer.uids(f"seg{index}")
        segments = [
            SegmentSpec(
                label=segment.label,
                label_name=segment.name,
                category=_code(segment.category),
                property_type=_code(segment.property_type),
                tracking_id=f"{findings.model_name}-{segment.name}",
                recommended_rgb=segment.rgb,
            )
            for segment in label_map.segments
        ]
        seg = build_segmentation(
            source_images=volume.datasets,
            label_map=label_map.array,
            segments=segments,
            algorithm=algorithm,
            series_instance_uid=series_uid,
            sop_instance_uid=sop_uid,
            series_number=writer.series_number(),
            series_description=_description(findings),
            frame_of_reference_uid=volume.frame_of_reference_uid,
        )
        writer.save(name, seg)
        segmentations.append(seg)
    if findings.detections or findings.classifications or findings.absent:
        name, series_uid, sop_uid = writer.uids("sr")
        report = build_measurement_report(
            source_images=volume.datasets,
            algorithm=algorithm,
            series_instance_uid=series_uid,
            sop_instance_uid=sop_uid,
            series_number=writer.series_number(),
            series_description=_description(findings, " measurements"),
            roi_findings=[_roi_finding(d, findings, segmentations) for d in findings.detections],
            image_findings=[
                *(
                    ImageFinding(
                        tracking_id=c.tracking_id,
                        finding_type=_code(c.concept),
                        measurements=[
                            MeasuredValue(
                                Code("122157", "DCM", "Probability"),
                                round(c.probability, 4),
                                Code("1", "UCUM", "no units"),
                            )
                        ],
                    )
                    for c in findings.classifications
                ),
                *(
                    ImageFinding(
                        tracking_id=f"no-{concept.meaning.lower().replace(' ', '-')}"[:64],
                        finding_type=_code(concept),
                        qualitative=[(_code(concept), Code("272519000", "SCT", "Absent"))],
                    )
                    for concept in findings.absent
                ),
            ],
        )
        writer.save(name, report)
    if explain:
        for index, heat_map in enumerate(findings.heat_maps):
            name, series_uid, sop_uid = writer.uids(f"pm{index}")
            parametric_map = build_parametric_map(
                source_images=volume.datasets,
                heat_map=HeatMapSpec(
                    array=heat_map.array,
                    content_label=heat_map.label,
                    description=heat_map.description,
                    method=_code(heat_map.method),
                ),
                algorithm=algorithm,
                series_instance_uid=series_uid,
                sop_instance_uid=sop_uid,
                series_number=writer.series_number(),
                series_description=_description(findings, f" {heat_map.label.lower()}"),
                frame_of_reference_uid=volume.frame_of_reference_uid,
            )
            writer.save(name, parametric_map)
    return writer.written


def _roi_finding(
    detection: Detection, findings: Findings, segmentations: list[Dataset]
) -> RoiFinding:
    """The report's group of one detection, referencing its SEG segment."""
    if detection.label_map_index is None or detection.label is None:
        raise ValueError(f"detection {detection.tracking_id!r} has no segmentation to reference")
    label_map = findings.label_maps[detection.label_map_index]
    numbers = {segment.label: n for n, segment in enumerate(label_map.segments, start=1)}
    return RoiFinding(
        tracking_id=detection.tracking_id,
        finding_type=_code(detection.finding_type),
        region=SegmentReference(segmentations[detection.label_map_index], numbers[detection.label]),
        measurements=[_measured(m) for m in detection.measurements],
        finding_site=None if detection.finding_site is None else _code(detection.finding_site),
    )


def write_refusal(
    volume: Volume,
    *,
    model: str,
    version: str,
    reason: str,
    job_uid: str,
    spool: Spool,
    series_number: int,
) -> ResultFile:
    """Write the SR saying ``model`` ``version`` produced no result for ``volume``, and why.

    Its UIDs derive from ``(job_uid, "refusal")``, so a retried job writes the same object.
    """
    output = "refusal"
    sop_uid = derive_uid(job_uid, output, "instance")
    report = build_refusal_report(
        source_images=volume.datasets,
        algorithm=AlgorithmIdentification(name=model, version=version),
        reason=reason,
        series_instance_uid=derive_uid(job_uid, output, "series"),
        sop_instance_uid=sop_uid,
        series_number=series_number,
    )
    relative = spool.result_path(job_uid, output)
    with spool.writing(relative) as handle:
        report.save_as(handle, enforce_file_format=True)
    return ResultFile(str(relative), sop_uid)
