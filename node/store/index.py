"""Index operations of the ingest side: associations and received instances."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from node.store.database import Database
from node.store.models import Association, Instance, Series, SeriesState, utcnow

__all__ = [
    "InstanceRecord",
    "RecordOutcome",
    "close_association",
    "input_set",
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


#: What indexing one instance did to its series: ``added`` while receiving; ``reopened`` a new
#: instance in a routed series (it is receiving again); ``resent`` an instance a routed series
#: already had (nothing changes for routing).
RecordOutcome = Literal["added", "reopened", "resent"]


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
) -> RecordOutcome:
    """Index an instance whose bytes are already durable at ``path`` (spool-relative).

    A re-sent instance (same SOP Instance UID) replaces the earlier row; the series' counters and
    last-received time are updated in the same transaction. A new instance in a series already
    routed reopens it (state receiving again); see :data:`RecordOutcome`.
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
) -> RecordOutcome:
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
        new_to_series = existing is None or existing.series_id != series.id
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
        if series.state == SeriesState.RECEIVING:
            return "added"
        if not new_to_series:
            return "resent"
        series.state = SeriesState.RECEIVING
        return "reopened"


def series_instance_paths(db: Database, series_id: int, *, up_to: int | None = None) -> list[str]:
    """The spool-relative paths of a series' instances (those with row id ``<= up_to`` if given)."""
    query = select(Instance.path).where(Instance.series_id == series_id)
    if up_to is not None:
        query = query.where(Instance.id <= up_to)
    with db.session() as session:
        return list(session.scalars(query.order_by(Instance.id)))


def input_set(session: Session, series_ids: list[int]) -> tuple[str, int]:
    """The identity of the instances of ``series_ids`` now: SHA-256 of their sorted SOP
    Instance UIDs, and their highest row id (a job's inputs are those up to it)."""
    sop_uids = session.scalars(
        select(Instance.sop_instance_uid)
        .where(Instance.series_id.in_(series_ids))
        .order_by(Instance.sop_instance_uid)
    )
    digest = hashlib.sha256("\n".join(sop_uids).encode("ascii", "replace")).hexdigest()
    highest = session.scalar(
        select(func.max(Instance.id)).where(Instance.series_id.in_(series_ids))
    )
    return digest, int(highest or 0)
