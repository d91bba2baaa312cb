"""Index operations of the ingest side: associations and received instances."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Connection, Dialect, Table, func, insert, select, update
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


def record_instances(
    db: Database, items: Sequence[Received], *, portable: bool = False
) -> list[RecordOutcome]:
    """Index several instances in one transaction (group commit); each one's outcome, in order.

    Each is indexed as :func:`record_instance` describes, in the order given. The transaction
    takes the write lock first (:meth:`Database.writer`), so what it reads about a series or an
    instance is what it then updates, whoever else writes the index.

    On SQLite the statements go straight to the driver, their values converted by the columns'
    own SQLAlchemy types (this is the hot path of every received instance: SQL expression
    compilation cost more than the rest of the store); elsewhere, or with ``portable``, they are
    SQLAlchemy Core statements. Both write the same rows.
    """
    with db.writer() as connection:
        batch: _Batch
        if connection.dialect.name == "sqlite" and not portable:
            batch = _DriverBatch(connection)
        else:
            batch = _CoreBatch(connection)
        return batch.record_all(items)


@dataclass(slots=True)
class _SeriesRow:
    id: int
    state: SeriesState
    #: Instances added (or moved away, negative) by this batch.
    delta: int = 0
    #: Received into by this batch (its last-received time and state are written).
    touched: bool = False


_SERIES: Table = Series.__table__  # type: ignore[assignment]
_INSTANCES: Table = Instance.__table__  # type: ignore[assignment]


class _Batch:
    """One group-commit transaction; each series' row is updated once, at the end."""

    def __init__(self) -> None:
        self._by_uid: dict[str, _SeriesRow] = {}
        self._by_id: dict[int, _SeriesRow] = {}

    # The statements, per backend.
    def _find_series(self, series_uid: str) -> tuple[int, str] | None:
        raise NotImplementedError

    def _series_state(self, series_id: int) -> str | None:
        raise NotImplementedError

    def _insert_series(self, values: dict[str, Any]) -> int:
        raise NotImplementedError

    def _find_instance(self, sop_uid: str) -> tuple[int, int] | None:
        raise NotImplementedError

    def _insert_instance(self, values: dict[str, Any]) -> None:
        raise NotImplementedError

    def _update_instance(self, instance_id: int, values: dict[str, Any]) -> None:
        raise NotImplementedError

    def _update_series(self, row: _SeriesRow, now: dt.datetime) -> None:
        raise NotImplementedError

    def record_all(self, items: Sequence[Received]) -> list[RecordOutcome]:
        now = utcnow()
        outcomes = [self._record(item, now) for item in items]
        for row in self._by_id.values():
            if row.delta or row.touched:
                self._update_series(row, now)
        return outcomes

    def _series_row(self, item: Received, now: dt.datetime) -> _SeriesRow:
        record = item.record
        row = self._by_uid.get(record.series_instance_uid)
        if row is not None:
            return row
        found = self._find_series(record.series_instance_uid)
        if found is None:
            series_id = self._insert_series(
                {
                    "series_instance_uid": record.series_instance_uid,
                    "study_instance_uid": record.study_instance_uid,
                    "state": SeriesState.RECEIVING,
                    "calling_ae_title": item.calling_ae_title,
                    "attributes": record.routing_attributes,
                    "expected_count": record.expected_count,
                    "instance_count": 0,
                    "first_received_at": now,
                    "last_received_at": now,
                    "study_pending": False,
                }
            )
            row = _SeriesRow(series_id, SeriesState.RECEIVING)
        else:
            row = self._by_id.get(found[0]) or _SeriesRow(found[0], SeriesState(found[1]))
        self._by_uid[record.series_instance_uid] = row
        self._by_id[row.id] = row
        return row

    def _other_series(self, series_id: int) -> _SeriesRow:
        row = self._by_id.get(series_id)
        if row is None:
            state = self._series_state(series_id) or SeriesState.RECEIVING
            row = _SeriesRow(series_id, SeriesState(state))
            self._by_id[series_id] = row
        return row

    def _record(self, item: Received, now: dt.datetime) -> RecordOutcome:
        record = item.record
        series = self._series_row(item, now)
        existing = self._find_instance(record.sop_instance_uid)
        new_to_series = existing is None or existing[1] != series.id
        values = {
            "transfer_syntax_uid": record.transfer_syntax_uid,
            "series_id": series.id,
            "association_id": item.association_id,
            "path": item.path,
            "size": item.size,
            "received_at": now,
        }
        if existing is None:
            self._insert_instance(
                {
                    "sop_instance_uid": record.sop_instance_uid,
                    "sop_class_uid": record.sop_class_uid,
                    **values,
                }
            )
            series.delta += 1
        else:
            if new_to_series:
                # Re-sent under another series: it now belongs there, and only there.
                self._other_series(existing[1]).delta -= 1
                series.delta += 1
            self._update_instance(existing[0], values)
        series.touched = True
        if series.state == SeriesState.RECEIVING:
            return "added"
        if not new_to_series:
            return "resent"
        series.state = SeriesState.RECEIVING
        return "reopened"


class _CoreBatch(_Batch):
    """SQLAlchemy Core statements (any backend)."""

    def __init__(self, connection: Connection) -> None:
        super().__init__()
        self._connection = connection

    def _find_series(self, series_uid: str) -> tuple[int, str] | None:
        found = self._connection.execute(
            select(_SERIES.c.id, _SERIES.c.state).where(_SERIES.c.series_instance_uid == series_uid)
        ).first()
        return None if found is None else (int(found[0]), str(found[1]))

    def _series_state(self, series_id: int) -> str | None:
        state = self._connection.scalar(select(_SERIES.c.state).where(_SERIES.c.id == series_id))
        return None if state is None else str(state)

    def _insert_series(self, values: dict[str, Any]) -> int:
        key = self._connection.execute(insert(_SERIES).values(**values)).inserted_primary_key
        assert key is not None  # an INSERT of one row
        return int(key[0])

    def _find_instance(self, sop_uid: str) -> tuple[int, int] | None:
        found = self._connection.execute(
            select(_INSTANCES.c.id, _INSTANCES.c.series_id).where(
                _INSTANCES.c.sop_instance_uid == sop_uid
            )
        ).first()
        return None if found is None else (int(found[0]), int(found[1]))

    def _insert_instance(self, values: dict[str, Any]) -> None:
        self._connection.execute(insert(_INSTANCES).values(**values))

    def _update_instance(self, instance_id: int, values: dict[str, Any]) -> None:
        self._connection.execute(
            update(_INSTANCES).where(_INSTANCES.c.id == instance_id).values(**values)
        )

    def _update_series(self, row: _SeriesRow, now: dt.datetime) -> None:
        values: dict[str, Any] = {"instance_count": _SERIES.c.instance_count + row.delta}
        if row.touched:
            values["last_received_at"] = now
            values["state"] = row.state
        self._connection.execute(update(_SERIES).where(_SERIES.c.id == row.id).values(**values))


class _DriverBatch(_Batch):
    """The same statements as :class:`_CoreBatch`, as SQL text on the SQLite driver's cursor;
    values go through the columns' bind processors, so the rows are byte for byte the same."""

    def __init__(self, connection: Connection) -> None:
        super().__init__()
        driver = connection.connection.dbapi_connection
        assert driver is not None
        self._cursor = driver.cursor()
        self._bind = _bind_processors(connection.dialect)

    def _convert(self, table: str, values: dict[str, Any]) -> list[Any]:
        processors = self._bind[table]
        converted = []
        for name, value in values.items():
            processor = processors.get(name)
            converted.append(value if processor is None else processor(value))
        return converted

    def _find_series(self, series_uid: str) -> tuple[int, str] | None:
        self._cursor.execute(
            "SELECT id, state FROM series WHERE series_instance_uid = ?", (series_uid,)
        )
        found = self._cursor.fetchone()
        return None if found is None else (int(found[0]), str(found[1]))

    def _series_state(self, series_id: int) -> str | None:
        self._cursor.execute("SELECT state FROM series WHERE id = ?", (series_id,))
        found = self._cursor.fetchone()
        return None if found is None else str(found[0])

    def _insert(self, table: str, values: dict[str, Any]) -> int:
        columns = ", ".join(values)
        marks = ", ".join("?" * len(values))
        self._cursor.execute(
            f"INSERT INTO {table} ({columns}) VALUES ({marks})",  # noqa: S608 - names are ours
            self._convert(table, values),
        )
        return int(self._cursor.lastrowid or 0)

    def _insert_series(self, values: dict[str, Any]) -> int:
        return self._insert("series", values)

    def _find_instance(self, sop_uid: str) -> tuple[int, int] | None:
        self._cursor.execute(
            "SELECT id, series_id FROM instances WHERE sop_instance_uid = ?", (sop_uid,)
        )
        found = self._cursor.fetchone()
        return None if found is None else (int(found[0]), int(found[1]))

    def _insert_instance(self, values: dict[str, Any]) -> None:
        self._insert("instances", values)

    def _update_instance(self, instance_id: int, values: dict[str, Any]) -> None:
        assignments = ", ".join(f"{name} = ?" for name in values)
        self._cursor.execute(
            f"UPDATE instances SET {assignments} WHERE id = ?",  # noqa: S608 - names are ours
            [*self._convert("instances", values), instance_id],
        )

    def _update_series(self, row: _SeriesRow, now: dt.datetime) -> None:
        if row.touched:
            values = self._convert("series", {"last_received_at": now, "state": row.state})
            self._cursor.execute(
                "UPDATE series SET instance_count = instance_count + ?, last_received_at = ?, "
                "state = ? WHERE id = ?",
                [row.delta, *values, row.id],
            )
        else:
            self._cursor.execute(
                "UPDATE series SET instance_count = instance_count + ? WHERE id = ?",
                (row.delta, row.id),
            )


@functools.cache
def _bind_processors(dialect: Dialect) -> dict[str, dict[str, Callable[[Any], Any] | None]]:
    """Each column's SQLAlchemy bind processor for ``dialect`` (None: the value as it is)."""
    return {
        table.name: {column.name: column.type.bind_processor(dialect) for column in table.columns}
        for table in (_SERIES, _INSTANCES)
    }


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
