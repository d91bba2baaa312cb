"""The export interface: one way of delivering a result object to one destination."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

__all__ = ["Exporter", "backoff_delay"]


class Exporter(Protocol):
    """Delivers result files to one destination.

    ``send`` returns normally only when the destination confirmed every file. It raises
    :class:`node.errors.PeerUnreachable` for failures worth retrying and
    :class:`node.errors.PeerRejected` for a refusal that a retry would not change.
    """

    name: str

    def send(self, paths: list[Path]) -> None:
        """Deliver ``paths`` (DICOM files) and return once each was confirmed."""
        ...


def backoff_delay(attempt: int, *, initial_s: float, max_s: float) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based): doubling, capped."""
    return float(min(initial_s * 2 ** max(attempt - 1, 0), max_s))
