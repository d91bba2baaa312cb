"""The rare 'unanswered C-STORE' under load is the sender's: pynetdicom 3.0.4 can lose an answer.

Seen twice under heavy load (the DIMSE fuzz test and the load test each lost one association): the
node's association thread waited for the next PDU while the pynetdicom sender waited for the
answer to its C-STORE until ``dimse_timeout``. The node had answered. A pynetdicom requestor runs
a reactor thread that polls the DIMSE message queue for requests *from* the peer; ``send_c_store``
pauses it (``_reactor_checkpoint.clear()``, then waits for ``_is_paused``) before sending. But
``_is_paused`` stays True from the reactor's previous pause until that thread, woken by the
previous operation's ``set()``, runs again: a reactor starved of CPU (two cores, load 4 to 8) is
seen as paused while it is about to poll. When it then polls just after the answer arrived and
before the sending thread picks it up, it takes the answer ("Received unexpected C-STORE service
message", dropped) and the sender times out. The stalled instance is on disk and indexed.

The interleaving is forced here, with no timing: the reactor, once woken, is held until the
answer is queued, and the sending thread is held until the reactor has polled. The guard
(:func:`answers_only_to_caller`) keeps the reactor from taking messages on an association that
only sends requests; with it the same interleaving gets its answer.

An unforced reproduction (not a test; minutes): 8 senders in the listener's process, 300
instances each, while ``dd ... conv=fsync`` loops; without the guard 2 of 3 runs lost one answer,
with it 0 of 3. C-ECHO, answered without touching the disk, loses an answer about 1 in 500.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE

from node.export.requestor import answers_only_to_caller
from node.store.database import Database
from tests.paths import shared_data_root
from tests.peers import running_listener

pytestmark = pytest.mark.integration

#: Deadline for each forced step; the test never sleeps for a fixed time.
STEP_S = 30.0


class _HeldReactor(threading.Event):
    """The reactor's checkpoint: once woken, the reactor thread is held until ``release()``
    returns True (as if the scheduler had not run it)."""

    def __init__(self, release: Callable[[], bool]) -> None:
        super().__init__()
        self._release = release
        self.armed = True
        self.holding = threading.Event()
        self.set()

    def wait(self, timeout: float | None = None) -> bool:
        woken = super().wait(timeout)
        if self.armed and threading.current_thread().name != _SENDER:
            self.holding.set()
            _until(self._release, "the answer to reach the sender's queue")
        return woken


_SENDER = "ingest-race-sender"


def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + STEP_S
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {STEP_S:.0f} s for {what}")
        time.sleep(0.001)


@pytest.fixture
def dataset() -> Dataset:
    ds = pydicom.dcmread(shared_data_root() / "pydicom-3.0.2/test_files/MR_small.dcm")
    ds.SOPInstanceUID = generate_uid()
    return ds


@pytest.fixture
def pynetdicom_warnings() -> Iterator[list[str]]:
    seen: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = Catch(level=logging.WARNING)
    logger = logging.getLogger("pynetdicom")
    logger.addHandler(handler)
    yield seen
    logger.removeHandler(handler)


def _send_with_late_reactor(
    tmp_path: Path, ds: Dataset, *, guarded: bool
) -> tuple[int | None, int]:
    """One C-STORE to the in-process listener with the reactor polling in the worst moment;
    the status the sender got (None: no answer) and the instances the node indexed."""
    outcome: dict[str, int | None] = {}
    with running_listener(tmp_path) as listener:
        ae = AE(ae_title="RACER")
        ae.dimse_timeout = 2  # the forced loss needs no longer: nothing else is in flight
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", listener.port, ae_title="AINODE")
        assert assoc.is_established
        if guarded:
            answers_only_to_caller(assoc)
        polled = threading.Event()
        queue = assoc.dimse.msg_queue
        checkpoint = _HeldReactor(lambda: queue.qsize() > 0)
        # Take the reactor's pause point before it passes it again: from its next pass on it is
        # "paused" (``_is_paused`` True) yet held just short of polling.
        assoc._reactor_checkpoint = checkpoint
        inner = assoc.dimse.get_msg

        def get_msg(block: bool = False) -> Any:
            if block:  # the sending thread, after its request went out
                _until(polled.is_set, "the reactor to poll")
                return inner(block)
            item = inner(block)
            if checkpoint.armed:
                checkpoint.armed = False
                polled.set()
            return item

        assoc.dimse.get_msg = get_msg  # type: ignore[method-assign]

        def send() -> None:
            status = assoc.send_c_store(ds)
            outcome["status"] = int(status.Status) if "Status" in status else None

        sender = threading.Thread(target=send, name=_SENDER)
        # The reactor must be held (paused as far as send_c_store can tell) before the send.
        _until(checkpoint.holding.is_set, "the reactor to reach its checkpoint")
        sender.start()
        sender.join(2 * STEP_S)
        assert not sender.is_alive()
        if assoc.is_established:
            assoc.release()
    db = Database(f"sqlite:///{tmp_path / 'index.sqlite'}")
    try:
        with db.engine.connect() as connection:
            indexed = connection.exec_driver_sql("SELECT count(*) FROM instances").scalar_one()
    finally:
        db.dispose()
    return outcome["status"], int(indexed)


@pytest.mark.timeout(120)
def test_a_late_reactor_gets_no_answer_with_the_guard(tmp_path: Path, dataset: Dataset) -> None:
    status, indexed = _send_with_late_reactor(tmp_path, dataset, guarded=True)
    assert (status, indexed) == (0x0000, 1)


@pytest.mark.timeout(120)
def test_without_the_guard_pynetdicom_drops_the_nodes_answer(
    tmp_path: Path, dataset: Dataset, pynetdicom_warnings: list[str]
) -> None:
    """Why the guard exists. If this fails after a pynetdicom upgrade, pynetdicom no longer
    loses the answer and the guard may go."""
    status, indexed = _send_with_late_reactor(tmp_path, dataset, guarded=False)
    assert indexed == 1  # the node stored the instance and answered
    assert status is None  # the sender's own reactor took the answer
    assert "Received unexpected C-STORE service message" in pynetdicom_warnings
