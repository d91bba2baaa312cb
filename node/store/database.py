"""The index database: engine, sessions, schema creation and SQLite durability settings."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import create_engine, event, inspect
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from node.errors import StoreError
from node.store.models import Base

__all__ = ["Database"]


class Database:
    """The index: one engine and a session factory, shared by every stage of the node."""

    def __init__(self, url: str) -> None:
        is_sqlite = url.startswith("sqlite")
        connect_args: dict[str, Any] = (
            {"timeout": 30, "check_same_thread": False} if is_sqlite else {}
        )
        self.engine: Engine = create_engine(url, connect_args=connect_args)
        if is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # Writers that read before they write (ingest's group commit) take SQLite's write lock
        # at BEGIN (IMMEDIATE), waiting for it up to the busy time-out, so what they read
        # cannot change before they write, whichever process or thread writes beside them.
        self._writer: Engine = create_engine(url, connect_args=connect_args)
        if is_sqlite:
            event.listen(self._writer, "connect", _sqlite_immediate)
            event.listen(self._writer, "begin", _begin_immediate)

    def create_schema(self) -> None:
        """Create any missing tables.

        Raises
        ------
        StoreError
            When an existing table lacks a column this version needs (an index written by an
            older development build; there are no migrations before the first release).
        """
        Base.metadata.create_all(self.engine)
        inspector = inspect(self.engine)
        for table in Base.metadata.sorted_tables:
            present = {column["name"] for column in inspector.get_columns(table.name)}
            missing = sorted(column.name for column in table.columns if column.name not in present)
            if missing:
                raise StoreError(
                    f"the index at {self.engine.url.render_as_string(hide_password=True)} is "
                    f"from an older build: table {table.name!r} lacks {', '.join(missing)}; "
                    "move it aside (after its jobs are done) and start again"
                )

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on error."""
        with self._sessions.begin() as session:
            yield session

    @contextmanager
    def writer(self) -> Iterator[Connection]:
        """A Core connection in a write transaction (SQLite: ``BEGIN IMMEDIATE``), committed on
        success and rolled back on error."""
        with self._writer.begin() as connection:
            yield connection

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()
        self._writer.dispose()


#: Longest wait for SQLite's write lock before a writer gives up (as the engines' time-out).
WRITE_LOCK_TIMEOUT_S = 30.0
#: Longest pause between two tries for the write lock.
_MAX_PAUSE_S = 0.002


def _sqlite_immediate(dbapi_connection: Any, record: Any) -> None:
    """A connection on which the driver begins nothing itself (``_begin_immediate`` does) and
    SQLite does not sleep for a lock (``_begin_immediate`` waits, in shorter steps)."""
    _sqlite_pragmas(dbapi_connection, record)
    dbapi_connection.isolation_level = None
    dbapi_connection.execute("PRAGMA busy_timeout=0")


def _begin_immediate(connection: Connection) -> None:
    """BEGIN IMMEDIATE, retried every 0.1-2 ms while another writer holds the lock.

    SQLite's own busy handler sleeps 1, 2, 5, 10, ... ms between tries: with receiving processes
    committing every millisecond or so, a writer would mostly sleep. Waiting here in short steps
    lets it take the lock as soon as it is free.
    """
    deadline = time.monotonic() + WRITE_LOCK_TIMEOUT_S
    pause = 0.0001
    while True:
        try:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
            return
        except OperationalError as exc:
            if "locked" not in str(exc.orig) or time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, _MAX_PAUSE_S)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL with synchronous=FULL: a committed transaction survives a crash or power loss.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
