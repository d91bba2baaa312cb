"""The index's tables: associations, series, instances, jobs and their history, deliveries."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Dialect,
    Enum,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

__all__ = [
    "Association",
    "Base",
    "Delivery",
    "Instance",
    "Job",
    "JobEvent",
    "JobState",
    "Series",
    "SeriesState",
    "utcnow",
]


def utcnow() -> dt.datetime:
    """The current time, timezone-aware, in UTC."""
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        """Store as naive UTC."""
        if value is None:
            return None
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(
        self, value: dt.datetime | None, dialect: Dialect
    ) -> dt.datetime | None:
        """Read back as aware UTC."""
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value


def _enum(kind: type[enum.StrEnum]) -> Enum:
    """Stored as its lower-case value (what `jobs list` and SQL users see), not its name."""
    return Enum(kind, native_enum=False, values_callable=lambda k: [m.value for m in k], length=16)


class Base(DeclarativeBase):
    """Declarative base of the index."""

    type_annotation_map: dict[Any, Any] = {  # noqa: RUF012 - SQLAlchemy reads it as a class attr
        dt.datetime: UTCDateTime(),
        dict[str, Any]: JSON,
        list[str]: JSON,
    }


class SeriesState(enum.StrEnum):
    """Where a series is on its way through the node."""

    RECEIVING = "receiving"
    ROUTED = "routed"


class JobState(enum.StrEnum):
    """A job's state; ``done``, ``failed``, ``rejected`` and ``dead`` are final.

    ``failed``: inference could not run (the reason says why). ``rejected``: the pipeline refused
    the series as outside its intended use. ``dead``: results were made but a destination refused
    them permanently or kept failing; an administrator may ``jobs retry`` a failed or dead job.
    """

    PENDING = "pending"
    RUNNING = "running"
    EXPORTING = "exporting"
    DONE = "done"
    FAILED = "failed"
    REJECTED = "rejected"
    DEAD = "dead"

    @property
    def is_final(self) -> bool:
        """Whether nothing more will happen to a job in this state without an administrator."""
        return self in (JobState.DONE, JobState.FAILED, JobState.REJECTED, JobState.DEAD)


class Association(Base):
    """One DICOM association that brought instances in."""

    __tablename__ = "associations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    calling_ae_title: Mapped[str] = mapped_column(String(16))
    opened_at: Mapped[dt.datetime]
    closed_at: Mapped[dt.datetime | None]
    released: Mapped[bool] = mapped_column(
        default=False, doc="Ended by a clean A-RELEASE (not an abort or a dropped connection)."
    )


class Series(Base):
    """A series being received or already handed to routing."""

    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    state: Mapped[SeriesState] = mapped_column(_enum(SeriesState), index=True)
    calling_ae_title: Mapped[str] = mapped_column(String(16))
    attributes: Mapped[dict[str, Any]] = mapped_column(
        doc="Routing attributes of the first instance (Modality, BodyPartExamined, ...)."
    )
    expected_count: Mapped[int | None]
    instance_count: Mapped[int] = mapped_column(default=0)
    first_received_at: Mapped[dt.datetime]
    last_received_at: Mapped[dt.datetime]
    study_pending: Mapped[bool] = mapped_column(
        default=False, index=True, doc="Routed, and its study's study-scope rules not yet run."
    )
    instances: Mapped[list[Instance]] = relationship(back_populates="series")


class Instance(Base):
    """One received instance and where its bytes are in the spool."""

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    association_id: Mapped[str | None] = mapped_column(ForeignKey("associations.id"), index=True)
    path: Mapped[str] = mapped_column(Text, doc="Relative to the spool root.")
    size: Mapped[int]
    received_at: Mapped[dt.datetime]
    series: Mapped[Series] = relationship(back_populates="instances")


class Job(Base):
    """One pipeline run on one series, its state and its result."""

    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("series_id", "rule_name", "input_digest"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uid: Mapped[str] = mapped_column(String(36), unique=True, doc="Stable across retries.")
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    rule_name: Mapped[str] = mapped_column(String(128))
    scope: Mapped[str] = mapped_column(
        String(8), default="series", doc="series: its series' instances; study: the study's."
    )
    input_digest: Mapped[str] = mapped_column(
        String(64), default="", doc="SHA-256 of the sorted input SOP Instance UIDs."
    )
    inputs_up_to: Mapped[int | None] = mapped_column(
        doc="Highest instance row id among the inputs: later arrivals are not the job's."
    )
    pipeline: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(
        String(32), doc="The concrete version, resolved when the job was created."
    )
    shadow_version: Mapped[str | None] = mapped_column(
        String(32), doc="A version run beside it on the same input; compared, never exported."
    )
    shadow_result: Mapped[dict[str, Any] | None] = mapped_column(
        JSON, doc="The shadow's outcome: its result file and Dice against the job's, or why not."
    )
    explain_refusal: Mapped[bool] = mapped_column(
        default=False, doc="A series outside the model card gets an SR saying why (its rule's)."
    )
    explain: Mapped[bool] = mapped_column(
        default=False, doc="Results include explanation heat maps (its rule's ``explain``)."
    )
    refused: Mapped[bool] = mapped_column(
        default=False, doc="Outside the model card: its results are the refusal SR, if any."
    )
    destinations: Mapped[list[str]]
    state: Mapped[JobState] = mapped_column(_enum(JobState), index=True)
    attempts: Mapped[int] = mapped_column(default=0)
    reason: Mapped[str | None] = mapped_column(Text)
    result_paths: Mapped[list[str]] = mapped_column(default=list)
    not_before: Mapped[dt.datetime | None] = mapped_column(doc="Do not pick up before this time.")
    leased_until: Mapped[dt.datetime | None] = mapped_column(
        doc="Set while a worker holds the job; a lease left by a crash is cleared at start-up."
    )
    created_at: Mapped[dt.datetime]
    updated_at: Mapped[dt.datetime]
    series: Mapped[Series] = relationship()
    events: Mapped[list[JobEvent]] = relationship(order_by="JobEvent.id")
    deliveries: Mapped[list[Delivery]] = relationship(order_by="Delivery.id")


class JobEvent(Base):
    """One line of a job's history."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    at: Mapped[dt.datetime]
    state: Mapped[JobState] = mapped_column(_enum(JobState))
    message: Mapped[str] = mapped_column(Text)


class Delivery(Base):
    """One result object to one destination: attempts and the peer's confirmation."""

    __tablename__ = "deliveries"
    __table_args__ = (UniqueConstraint("job_id", "destination", "sop_instance_uid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    destination: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(default=0)
    status: Mapped[int | None] = mapped_column(doc="The peer's last DIMSE status.")
    confirmed_at: Mapped[dt.datetime | None]
