"""Group commit of the index: instances stored at the same time share one transaction.

Every store waits until its index row is committed (the instance is acknowledged only then), but
stores running at once in one process (several associations, STOW-RS requests) need not commit one
by one: the first to reach the index becomes the leader and commits every row queued by then in
one transaction (one write-lock acquisition, one WAL fsync); the others find theirs committed when
they get their turn. A lone store commits alone, with no hand-off to another thread.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from node.store.database import Database
from node.store.index import Received, RecordOutcome, record_instances

__all__ = ["GroupCommitter"]


@dataclass(slots=True)
class _Pending:
    item: Received
    done: bool = False
    outcome: RecordOutcome | None = None
    error: BaseException | None = None


class GroupCommitter:
    """Indexes received instances, several per transaction when they arrive together.

    Parameters
    ----------
    max_batch
        Most rows in one transaction.
    """

    def __init__(self, db: Database, *, max_batch: int = 64) -> None:
        self._db = db
        self._max_batch = max_batch
        self._queue: list[_Pending] = []
        self._changed = threading.Condition()
        self._committing = False

    def record(self, item: Received) -> RecordOutcome:
        """Index ``item``; return once its row is committed.

        A store waits on a condition, not on a lock: when a commit ends, every waiter wakes, those
        it committed return, and one of the others leads the next commit (a lock's waiters can
        lose it to newcomers indefinitely, even when their row is long committed).

        Raises
        ------
        sqlalchemy.exc.SQLAlchemyError
            If the transaction holding it failed (nothing of it was committed).
        """
        pending = _Pending(item)
        with self._changed:
            self._queue.append(pending)
        while True:
            with self._changed:
                while self._committing and not pending.done:
                    self._changed.wait()
                if pending.done:
                    break
                self._committing = True
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
            try:
                self._commit(batch)
            finally:
                with self._changed:
                    self._committing = False
                    self._changed.notify_all()
        if pending.error is not None:
            raise pending.error
        assert pending.outcome is not None
        return pending.outcome

    def _commit(self, batch: list[_Pending]) -> None:
        try:
            outcomes = record_instances(self._db, [pending.item for pending in batch])
        except Exception as exc:
            for pending in batch:
                pending.error, pending.done = exc, True
            return
        for pending, outcome in zip(batch, outcomes, strict=True):
            pending.outcome, pending.done = outcome, True
