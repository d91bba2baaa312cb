"""Named crash points for the crash-safety tests.

The code calls :func:`crash_point` at the moments where a crash is most likely to lose or
duplicate something (after a file is written but before it is indexed, after a result is sent but
before the confirmation is recorded, ...). In production it does nothing. A test arms one point
with the environment variable ``PACS_AI_NODE_CRASH_AT=NAME[:N]``: the N-th time (default 1) the
process passes ``NAME``, it kills itself with SIGKILL, exactly as a power cut or the OOM killer
would, with no cleanup.
"""

from __future__ import annotations

import os
import signal
import threading

__all__ = ["CRASH_ENV", "POINTS", "crash_point"]

CRASH_ENV = "PACS_AI_NODE_CRASH_AT"

#: Every named point, so a test can iterate over them and a typo fails loudly.
POINTS = frozenset(
    {
        "ingest.after_write",  # bytes fsynced in the spool, not yet indexed
        "ingest.after_index",  # indexed, success status not yet returned
        "assembly.after_route",  # series routed and jobs queued (committed)
        "job.after_start",  # job marked running, inference not begun
        "job.after_result",  # result file written, job not yet marked exporting
        "export.after_send",  # destination confirmed, confirmation not yet recorded
        "export.after_confirm",  # confirmation recorded, job not yet done
    }
)

_armed_name, _, _armed_count = os.environ.get(CRASH_ENV, "").partition(":")
_remaining = int(_armed_count or 1) if _armed_name else 0
_lock = threading.Lock()

if _armed_name and _armed_name not in POINTS:
    raise ValueError(f"{CRASH_ENV} names unknown crash point {_armed_name!r}")


def crash_point(name: str) -> None:
    """Die here (SIGKILL) if a test armed ``name``; otherwise do nothing."""
    global _remaining
    if name != _armed_name:
        return
    with _lock:
        _remaining -= 1
        if _remaining == 0:
            os.kill(os.getpid(), signal.SIGKILL)
