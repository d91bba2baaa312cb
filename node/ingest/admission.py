"""The association limit (``max_associations``), held in one process or across receiving processes.

An association takes a slot when its request is admitted and gives it back when it ends. With
several receiving processes (:mod:`node.ingest.receivers`) the count lives in shared memory, so
the limit holds for the node as a whole, whichever process a connection lands on.
"""

from __future__ import annotations

import multiprocessing
import threading
from typing import Any, Protocol

__all__ = ["Admission", "LocalAdmission", "SharedAdmission"]


class Admission(Protocol):
    """Slots for associations served at once."""

    def acquire(self) -> bool:
        """Take a slot; False when all are taken."""

    def release(self) -> None:
        """Give a slot back."""


class LocalAdmission:
    """The limit within one process."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._count = 0
        self._lock = threading.Lock()

    def acquire(self) -> bool:
        """Take a slot; False when all are taken."""
        with self._lock:
            if self._count >= self.limit:
                return False
            self._count += 1
            return True

    def release(self) -> None:
        """Give a slot back."""
        with self._lock:
            self._count = max(self._count - 1, 0)


class SharedAdmission:
    """The limit across processes: a counter in shared memory, made before they start and passed
    to each (``multiprocessing`` pickles it for a process it starts, and only then)."""

    def __init__(self, limit: int, context: Any = None) -> None:
        self.limit = limit
        self._count = (context or multiprocessing).Value("i", 0)

    def acquire(self) -> bool:
        """Take a slot; False when all are taken."""
        with self._count.get_lock():
            if self._count.value >= self.limit:
                return False
            self._count.value += 1
            return True

    def release(self) -> None:
        """Give a slot back."""
        with self._count.get_lock():
            self._count.value = max(self._count.value - 1, 0)
