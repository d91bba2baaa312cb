"""A guard for pynetdicom associations that only send requests (storage, verification SCUs).

pynetdicom (3.0.4, and upstream as of this writing: pydicom/pynetdicom#875) has a race: the
association's reactor thread polls the DIMSE queue for requests from the peer, and a
``send_c_store`` pauses it by waiting for a flag that still says "paused" from its previous
pause. On a busy machine the reactor can be woken but not yet running, take the peer's answer
off the queue, log "Received unexpected C-STORE service message" and drop it; the sender then
waits out ``dimse_timeout`` and aborts, although the peer stored the object.
``tests/integration/test_ingest_sender_race.py`` forces that interleaving step by step.
"""

from __future__ import annotations

from typing import Any

from pynetdicom.association import Association

__all__ = ["answers_only_to_caller"]


def answers_only_to_caller(assoc: Association) -> None:
    """Keep ``assoc``'s reactor thread from taking DIMSE messages off its queue.

    Only the reactor polls the queue without blocking (it serves requests from the peer); every
    ``send_*`` method blocks on it for its answer. On an association that only sends requests
    the reactor then has nothing to take, and cannot take an answer meant for the thread that
    sent the request. Call it once the association is established, before the first request.
    """
    receive = assoc.dimse.get_msg

    def get_msg(block: bool = False) -> Any:
        return receive(block) if block else (None, None)

    assoc.dimse.get_msg = get_msg  # type: ignore[method-assign]
