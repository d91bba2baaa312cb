"""Fuzzing the ingest path with mutated real files (hypothesis, derandomized: the same inputs on
every run, so CI is reproducible; set ``FUZZ_RANDOM=1`` to explore new ones locally).

(a) :func:`node.ingest.dimse.read_record` gets 10,000 mutated files; it must return a valid record
    or raise :class:`~node.errors.IngestError`, nothing else, and never take long.
(b) 300 mutated datasets go over a real association to the in-process listener, which must
    answer each with a status and keep serving (a C-ECHO and a good series afterwards).

Each test asserts how many inputs it really ran; ``-s`` prints the counts.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.uid import UID

from node.errors import IngestError
from node.ingest.dimse import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_SOP_CLASS_MISMATCH,
    DimseListener,
    read_record,
)
from tests.fuzz.corpus import mutated, raw_sender, seeds
from tests.peers import nodelay_env, running_listener, storescu

pytestmark = [pytest.mark.fuzz, pytest.mark.filterwarnings("ignore")]

#: Inputs per mutation kind for read_record (4 kinds: 10,000 in all).
READ_RECORD_EXAMPLES = 2_500
#: Mutated datasets sent over DIMSE.
DIMSE_EXAMPLES = 300
#: No single input may take longer than this to parse (a hang shows up as the test's timeout).
SLOWEST_ALLOWED_S = 2.0

FUZZ_SETTINGS = settings(
    database=None,
    derandomize=not os.environ.get("FUZZ_RANDOM"),
    deadline=None,  # timed below, deterministically
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)


@pytest.fixture(autouse=True)
def _quiet_pydicom() -> Iterator[None]:
    """pydicom warns about every malformed input; thousands of records are noise here."""
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["bit_flips", "truncations", "insertions", "length_changes"])
def test_read_record_raises_only_ingest_error(kind: str) -> None:
    outcomes: collections.Counter[str] = collections.Counter()
    slowest = 0.0

    @settings(FUZZ_SETTINGS, max_examples=READ_RECORD_EXAMPLES)
    @given(case=mutated(kind))
    def run(case: tuple[object, bytes]) -> None:
        nonlocal slowest
        _seed, data = case
        started = time.perf_counter()
        try:
            record = read_record(data)
        except IngestError:
            outcomes["refused"] += 1
        else:
            for uid in (
                record.sop_instance_uid,
                record.sop_class_uid,
                record.series_instance_uid,
                record.study_instance_uid,
            ):
                assert UID(uid).is_valid, uid
            assert UID(record.transfer_syntax_uid).is_valid
            assert all(isinstance(v, str) for v in record.routing_attributes["ImageType"])
            assert record.expected_count is None or record.expected_count > 0
            outcomes["accepted"] += 1
        slowest = max(slowest, time.perf_counter() - started)

    run()
    print(f"read_record {kind}: {dict(outcomes)}, slowest {slowest * 1000:.0f} ms")
    assert sum(outcomes.values()) >= READ_RECORD_EXAMPLES
    assert slowest < SLOWEST_ALLOWED_S


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_listener_answers_every_mutated_dataset_and_keeps_serving(
    tmp_path: Path, lidc_dir: Path
) -> None:
    contexts = sorted({(s.sop_class_uid, s.transfer_syntax_uid) for s in seeds()})
    statuses: collections.Counter[int] = collections.Counter()
    case_path = tmp_path / "case.dcm"
    listener: DimseListener
    kinds = st.sampled_from(["bit_flips", "truncations", "insertions", "length_changes"])
    (tmp_path / "node").mkdir()
    with (
        running_listener(tmp_path / "node") as listener,
        raw_sender(listener.port, contexts) as sender,
    ):

        @settings(FUZZ_SETTINGS, max_examples=DIMSE_EXAMPLES)
        @given(case=kinds.flatmap(lambda kind: mutated(kind, dataset_only=True)))
        def run(case: tuple[object, bytes]) -> None:
            _seed, data = case
            case_path.write_bytes(data)
            status = sender.send(case_path)
            assert status in (0x0000, STATUS_SOP_CLASS_MISMATCH, STATUS_CANNOT_UNDERSTAND), status
            statuses[status] += 1

        run()
        assert sender.assoc.is_established  # type: ignore[attr-defined]
        echo = _echo(listener.port)
        assert echo.returncode == 0, echo.stderr
        good = storescu(listener.port, sorted(lidc_dir.glob("*.dcm"))[:3])
        assert good.returncode == 0, good.stderr
    print(f"DIMSE: {sum(statuses.values())} mutated datasets, statuses {dict(statuses)}")
    assert sum(statuses.values()) >= DIMSE_EXAMPLES


def _echo(port: int) -> object:
    import subprocess

    return subprocess.run(
        ["echoscu", "-aec", "AINODE", "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=30,
        env=nodelay_env(),
        check=False,
    )
