"""Watches the index for series and studies that became complete and hands each on, atomically."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

from sqlalchemy.orm import Session

from node.assembly.completeness import CompleteSeries, complete_series, complete_studies
from node.faults import crash_point
from node.logging import get_logger, short_uid
from node.store.database import Database
from node.store.models import Series, utcnow

__all__ = ["CompletenessWatcher", "CompletionHandler"]

log = get_logger(__name__)


class CompletionHandler(Protocol):
    """What the watcher hands complete series and studies to (routing, in the node)."""

    def announced_count(self, series: Series) -> int | None:
        """The instance count a rule announces for ``series``, if any."""
        ...

    def series_complete(self, session: Session, complete: CompleteSeries) -> object:
        """Route a complete series, in the caller's transaction."""
        ...

    def study_complete(self, session: Session, study_instance_uid: str) -> object:
        """Run the study-scope rules of a complete study, in the caller's transaction."""
        ...


class CompletenessWatcher:
    """Every ``interval_s``, hands each newly complete series, then study, to ``handler``.

    The handler runs inside the transaction that found the series (or study), so marking it
    routed and queuing its jobs commit together or not at all; ``on_handed`` is called after
    that commit (the node wakes its workers).
    """

    def __init__(
        self,
        db: Database,
        handler: CompletionHandler,
        *,
        quiet_period_s: float,
        interval_s: float = 0.1,
        on_handed: Callable[[], object] | None = None,
    ) -> None:
        self._db = db
        self._on_handed = on_handed
        self._handler = handler
        self._quiet_period_s = quiet_period_s
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self) -> int:
        """Check once; return how many series and studies were handed on."""
        handed = 0
        with self._db.session() as session:
            found = complete_series(
                session,
                now=utcnow(),
                quiet_period_s=self._quiet_period_s,
                announced_count=self._handler.announced_count,
            )
            for complete in found:
                try:
                    with session.begin_nested():
                        self._handler.series_complete(session, complete)
                    handed += 1
                except Exception:  # one bad series must not hold up the others
                    log.exception(
                        "assembly.handoff_failed",
                        series=short_uid(complete.series.series_instance_uid),
                    )
        with self._db.session() as session:
            for study in complete_studies(session):
                try:
                    with session.begin_nested():
                        self._handler.study_complete(session, study)
                    handed += 1
                except Exception:
                    log.exception("assembly.handoff_failed", study=short_uid(study))
        if handed:
            crash_point("assembly.after_route")
            if self._on_handed is not None:
                self._on_handed()
        return handed

    def start(self) -> None:
        """Poll in a background thread until :meth:`stop`."""
        self._thread = threading.Thread(target=self._loop, name="completeness", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception:
                log.exception("assembly.poll_failed")
            self._stop.wait(self._interval_s)
