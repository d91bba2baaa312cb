"""Index operations of the ingest side: associations and received instances."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from node.store.database import Database
from node.store.models import Association, Instance, Series, SeriesState, utcnow

__all__ = [
    "InstanceRecord",
    "close_association",
    "open_association",
    "record_instance",
    "recover_associations",
    "series_instance_paths",
]


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """What the index keeps of one received instance (read from its header)."""

    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    study_instance_uid: str
    transfer_syntax_uid: str
    routing_attributes: dict[str, Any]
    expected_count: int | None


def open_association(db: Database, association_id: str, calling_ae_title: str) -> None:
    """Record an accepted association."""
    with db.session() as session:
        session.add(
            Association(id=association_id, calling_ae_title=calling_ae_title, opened_at=utcnow())
        )


def close_association(db: Database, association_id: str, *, released: bool = False) -> None:
    """Record that an association ended: ``released`` cleanly, or aborted or dropped."""
    with db.session() as session:
        session.execute(
            update(Association)
            .where(Association.id == association_id, Association.closed_at.is_(None))
            .values(closed_at=utcnow(), released=released)
        )


def recover_associations(db: Database) -> int:
    """At start-up, close every association a previous process left open; return how many."""
    with db.session() as session:
        result = session.execute(
            update(Association).where(Association.closed_at.is_(None)).values(closed_at=utcnow())
        )
        return int(getattr(result, "rowcount", 0) or 0)


def record_instance(
    db: Database,
    record: InstanceRecord,
    *,
    path: str,
    size: int,
    association_id: str | None,
    calling_ae_title: str,
) -> bool:
    """Index an instance whose bytes are already durable at ``path`` (spool-relative).

    A re-sent instance (same SOP Instance UID) replaces the earlier row; the series' counters and
    last-received time are updated in the same transaction. Returns False when the series had
    already been routed (the instance is kept, but no new job is made for it).
    """
    write = functools.partial(
        _record,
        db,
        record,
        path=path,
        size=size,
        association_id=association_id,
        calling_ae_title=calling_ae_title,
    )
    try:
        return write()
    except IntegrityError:
        # Another association created the same series or instance row at the same moment:
        # the second attempt sees that row and updates it instead.
        return write()


def _record(
    db: Database,
    record: InstanceRecord,
    *,
    path: str,
    size: int,
    association_id: str | None,
    calling_ae_title: str,
) -> bool:
    now = utcnow()
    with db.session() as session:
        series = session.scalars(
            select(Series).where(Series.series_instance_uid == record.series_instance_uid)
        ).one_or_none()
        if series is None:
            series = Series(
                series_instance_uid=record.series_instance_uid,
                study_instance_uid=record.study_instance_uid,
                state=SeriesState.RECEIVING,
                calling_ae_title=calling_ae_title,
                attributes=record.routing_attributes,
                expected_count=record.expected_count,
                instance_count=0,
                first_received_at=now,
                last_received_at=now,
            )
            session.add(series)
            session.flush()
        existing = session.scalars(
            select(Instance).where(Instance.sop_instance_uid == record.sop_instance_uid)
        ).one_or_none()
        if existing is None:
            session.add(
                Instance(
                    sop_instance_uid=record.sop_instance_uid,
                    sop_class_uid=record.sop_class_uid,
                    transfer_syntax_uid=record.transfer_syntax_uid,
                    series_id=series.id,
                    association_id=association_id,
                    path=path,
                    size=size,
                    received_at=now,
                )
            )
            series.instance_count += 1
        else:
            if existing.series_id != series.id:
                # Re-sent under another series: it now belongs there, and only there.
                previous = session.get(Series, existing.series_id)
                if previous is not None:
                    previous.instance_count -= 1
                existing.series_id = series.id
                series.instance_count += 1
            existing.path, existing.size, existing.received_at = path, size, now
            existing.transfer_syntax_uid = record.transfer_syntax_uid
            existing.association_id = association_id
        series.last_received_at = now
        return series.state == SeriesState.RECEIVING


def series_instance_paths(db: Database, series_id: int) -> list[str]:
    """The spool-relative paths of every instance of a series."""
    with db.session() as session:
        return list(
            session.scalars(
                select(Instance.path).where(Instance.series_id == series_id).order_by(Instance.id)
            )
        )
