"""Index operations of the ingest side: associations and received instances."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Connection, Table, func, insert, select, update
from sqlalchemy.orm import Session

from node.store.database import Database
from node.store.models import Association, Instance, Series, SeriesState, utcnow

__all__ = [
    "InstanceRecord",
    "Received",
    "RecordOutcome",
    "close_association",
    "input_set",
    "open_association",
    "record_instance",
    "record_instances",
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


@dataclass(frozen=True, slots=True)
class Received:
    """An instance whose bytes are durable at ``path`` (spool-relative), to be indexed."""

    record: InstanceRecord
    path: str
    size: int
    association_id: str | None
    calling_ae_title: str


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
    received = Received(record, path, size, association_id, calling_ae_title)
    [outcome] = record_instances(db, [received])
    return outcome


def record_instances(db: Database, items: Sequence[Received]) -> list[RecordOutcome]:
    """Index several instances in one transaction (group commit); each one's outcome, in order.

    Each is indexed as :func:`record_instance` describes, in the order given. The transaction
    takes the write lock first (:meth:`Database.writer`), so what it reads about a series or an
    instance is what it then updates, whoever else writes the index.
    """
    with db.writer() as connection:
        return _Batch(connection).record_all(items)


@dataclass(slots=True)
class _SeriesRow:
    id: int
    state: SeriesState
    #: Instances added (or moved away, negative) by this batch.
    delta: int = 0
    #: Received into by this batch (its last-received time and state are written).
    touched: bool = False


class _Batch:
    """One group-commit transaction: SQL Core statements, each series' row updated once."""

    _series: Table = Series.__table__  # type: ignore[assignment]
    _instances: Table = Instance.__table__  # type: ignore[assignment]

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._by_uid: dict[str, _SeriesRow] = {}
        self._by_id: dict[int, _SeriesRow] = {}

    def record_all(self, items: Sequence[Received]) -> list[RecordOutcome]:
        now = utcnow()
        outcomes = [self._record(item, now) for item in items]
        for row in self._by_id.values():
            values: dict[str, Any] = {}
            if row.delta:
                values["instance_count"] = self._series.c.instance_count + row.delta
            if row.touched:
                values["last_received_at"] = now
                values["state"] = row.state
            if values:
                self._connection.execute(
                    update(self._series).where(self._series.c.id == row.id).values(**values)
                )
        return outcomes

    def _series_row(self, item: Received, now: Any) -> _SeriesRow:
        record = item.record
        row = self._by_uid.get(record.series_instance_uid)
        if row is not None:
            return row
        series = self._series
        found = self._connection.execute(
            select(series.c.id, series.c.state).where(
                series.c.series_instance_uid == record.series_instance_uid
            )
        ).first()
        if found is None:
            inserted = self._connection.execute(
                insert(series).values(
                    series_instance_uid=record.series_instance_uid,
                    study_instance_uid=record.study_instance_uid,
                    state=SeriesState.RECEIVING,
                    calling_ae_title=item.calling_ae_title,
                    attributes=record.routing_attributes,
                    expected_count=record.expected_count,
                    instance_count=0,
                    first_received_at=now,
                    last_received_at=now,
                    study_pending=False,
                )
            )
            key = inserted.inserted_primary_key
            assert key is not None  # an INSERT of one row
            row = _SeriesRow(int(key[0]), SeriesState.RECEIVING)
        else:
            row = self._by_id.get(int(found.id)) or _SeriesRow(
                int(found.id), SeriesState(found.state)
            )
        self._by_uid[record.series_instance_uid] = row
        self._by_id[row.id] = row
        return row

    def _other_series(self, series_id: int) -> _SeriesRow:
        row = self._by_id.get(series_id)
        if row is None:
            state = self._connection.scalar(
                select(self._series.c.state).where(self._series.c.id == series_id)
            )
            row = _SeriesRow(series_id, SeriesState(state or SeriesState.RECEIVING))
            self._by_id[series_id] = row
        return row

    def _record(self, item: Received, now: Any) -> RecordOutcome:
        record, instances = item.record, self._instances
        series = self._series_row(item, now)
        existing = self._connection.execute(
            select(instances.c.id, instances.c.series_id).where(
                instances.c.sop_instance_uid == record.sop_instance_uid
            )
        ).first()
        new_to_series = existing is None or int(existing.series_id) != series.id
        values = {
            "transfer_syntax_uid": record.transfer_syntax_uid,
            "series_id": series.id,
            "association_id": item.association_id,
            "path": item.path,
            "size": item.size,
            "received_at": now,
        }
        if existing is None:
            self._connection.execute(
                insert(instances).values(
                    sop_instance_uid=record.sop_instance_uid,
                    sop_class_uid=record.sop_class_uid,
                    **values,
                )
            )
            series.delta += 1
        else:
            if new_to_series:
                # Re-sent under another series: it now belongs there, and only there.
                self._other_series(int(existing.series_id)).delta -= 1
                series.delta += 1
            self._connection.execute(
                update(instances).where(instances.c.id == existing.id).values(**values)
            )
        series.touched = True
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
