"""Turns a pipeline's Findings into result objects (via dicom_sr) and writes them to the spool."""

from __future__ import annotations

import io
from dataclasses import dataclass

from pydicom.sr.coding import Code

from dicom_sr import AlgorithmIdentification, derive_uid
from dicom_sr.refusal import build_refusal_report
from dicom_sr.seg import SegmentSpec, build_segmentation
from node.assembly.volume import Volume
from node.pipelines.findings import CodedConcept, Findings
from node.store.spool import Spool

__all__ = ["ResultFile", "write_refusal", "write_results"]


@dataclass(frozen=True, slots=True)
class ResultFile:
    """One result object written to the spool (spool-relative path) and its SOP Instance UID."""

    path: str
    sop_instance_uid: str


def _code(concept: CodedConcept) -> Code:
    return Code(concept.value, concept.scheme, concept.meaning)


def write_results(
    findings: Findings,
    volume: Volume,
    *,
    job_uid: str,
    spool: Spool,
    series_number: int,
    output_prefix: str = "seg",
) -> list[ResultFile]:
    """Write one DICOM-SEG per label map; UIDs derive from ``(job_uid, output)`` only.

    The SEG is written in the Frame of Reference of the first source slice in sorted order
    (:attr:`Volume.frame_of_reference_uid`), which is the source's own when it is consistent.
    Outputs are named ``<output_prefix><index>`` (a shadow version's use another prefix, so
    their UIDs and files never collide with the job's own).
    """
    algorithm = AlgorithmIdentification(name=findings.model_name, version=findings.model_version)
    written: list[ResultFile] = []
    for index, label_map in enumerate(findings.label_maps):
        output = f"{output_prefix}{index}"
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
        sop_uid = derive_uid(job_uid, output, "instance")
        seg = build_segmentation(
            source_images=volume.datasets,
            label_map=label_map.array,
            segments=segments,
            algorithm=algorithm,
            series_instance_uid=derive_uid(job_uid, output, "series"),
            sop_instance_uid=sop_uid,
            series_number=series_number + index,
            series_description=f"AI {findings.model_name} v{findings.model_version}"[:64],
            frame_of_reference_uid=volume.frame_of_reference_uid,
        )
        buffer = io.BytesIO()
        seg.save_as(buffer, enforce_file_format=True)
        relative = spool.result_path(job_uid, output)
        spool.write(relative, buffer.getvalue())
        written.append(ResultFile(str(relative), sop_uid))
    return written


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
    buffer = io.BytesIO()
    report.save_as(buffer, enforce_file_format=True)
    relative = spool.result_path(job_uid, output)
    spool.write(relative, buffer.getvalue())
    return ResultFile(str(relative), sop_uid)
