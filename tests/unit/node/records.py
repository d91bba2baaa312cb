"""Index records of CT instances for tests that exercise the index without DICOM files."""

from __future__ import annotations

from node.store.database import Database
from node.store.index import InstanceRecord, RecordOutcome, record_instance

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"


def ct_record(
    sop_uid: str,
    series_uid: str = "1.2.3.4",
    *,
    expected: int | None = None,
    modality: str = "CT",
    study_uid: str = "1.2.3",
) -> InstanceRecord:
    """A CT instance (of study 1.2.3 unless told), as ingest would record it."""
    return InstanceRecord(
        sop_instance_uid=sop_uid,
        sop_class_uid=CT_IMAGE_STORAGE,
        series_instance_uid=series_uid,
        study_instance_uid=study_uid,
        transfer_syntax_uid=IMPLICIT_VR_LITTLE_ENDIAN,
        routing_attributes={"Modality": modality, "ImageType": ["ORIGINAL", "AXIAL"]},
        expected_count=expected,
    )


def store(db: Database, record: InstanceRecord, *, association: str | None = None) -> RecordOutcome:
    """Index ``record`` as received from ORTHANC; return what it did to its series."""
    return record_instance(
        db,
        record,
        path=f"instances/{record.series_instance_uid}/{record.sop_instance_uid}.dcm",
        size=10,
        association_id=association,
        calling_ae_title="ORTHANC",
    )
