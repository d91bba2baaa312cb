"""Watches the index for series that became complete and hands each to a callback, atomically."""

from __future__ import annotations

import threading
from collections.abc import Callable

from sqlalchemy.orm import Session

from node.assembly.completeness import complete_series
from node.faults import crash_point
from node.logging import get_logger, short_uid
from node.store.database import Database
from node.store.models import Series, utcnow

__all__ = ["CompletenessWatcher"]

log = get_logger(__name__)


class CompletenessWatcher:
    """Every ``interval_s``, passes each newly complete series to ``on_complete``.

    ``on_complete`` runs inside the transaction that found the series, so marking it routed and
    queuing its jobs commit together or not at all.
    """

    def __init__(
        self,
        db: Database,
        on_complete: Callable[[Session, Series], object],
        *,
        quiet_period_s: float,
        interval_s: float = 0.25,
    ) -> None:
        self._db = db
        self._on_complete = on_complete
        self._quiet_period_s = quiet_period_s
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self) -> int:
        """Check once; return how many series were handed on."""
        with self._db.session() as session:
            found = complete_series(session, now=utcnow(), quiet_period_s=self._quiet_period_s)
            handed = 0
            for series in found:
                try:
                    with session.begin_nested():
                        self._on_complete(session, series)
                    handed += 1
                except Exception:  # one bad series must not hold up the others
                    log.exception(
                        "assembly.handoff_failed", series=short_uid(series.series_instance_uid)
                    )
        if handed:
            crash_point("assembly.after_route")
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
