"""Worker threads that claim jobs from the durable queue and run them."""

from __future__ import annotations

import threading

from node.jobs.queue import claim_next, release
from node.jobs.runner import JobRunner
from node.logging import get_logger
from node.store.database import Database

__all__ = ["WorkerPool"]

log = get_logger(__name__)


class WorkerPool:
    """``size`` threads, each claiming the next runnable job, running it, and releasing it."""

    def __init__(self, db: Database, runner: JobRunner, *, size: int, idle_s: float = 0.2) -> None:
        self._db = db
        self._runner = runner
        self._size = size
        self._idle_s = idle_s
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._busy: set[int] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the worker threads."""
        for number in range(self._size):
            thread = threading.Thread(target=self._loop, name=f"worker-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("workers.started", workers=self._size)

    def wake(self) -> None:
        """New jobs were queued: idle workers look now instead of at their next poll."""
        self._wake.set()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Ask the workers to stop after their current job and wait for them."""
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout_s)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                worked = self._once()
            except Exception:  # the index is unreachable for a moment: wait and try again
                log.exception("workers.error")
                worked = False
            if not worked:
                self._wake.wait(self._idle_s)
                self._wake.clear()

    def _once(self) -> bool:
        with self._lock:
            busy = tuple(self._busy)
        job = claim_next(self._db, exclude=busy)
        if job is None:
            return False
        with self._lock:
            self._busy.add(job.id)
        try:
            self._runner.run(job)
        finally:
            with self._lock:
                self._busy.discard(job.id)
            release(self._db, job.id)
        return True
