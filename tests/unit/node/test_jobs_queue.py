"""The durable queue: completeness, routing into jobs, claims, leases and restart recovery."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import select

from node.assembly.watcher import CompletenessWatcher
from node.jobs.queue import claim_next, get_job, recover_jobs, release, transition
from node.routing.dispatch import Dispatcher
from node.routing.rules import RuleSet
from node.store.database import Database
from node.store.index import close_association, open_association, recover_associations
from node.store.models import Job, JobState, Series, SeriesState, utcnow
from tests.unit.node.records import ct_record, store

RULES = RuleSet.model_validate(
    {
        "rules": [
            {
                "name": "ct",
                "match": {"modality": ["CT"]},
                "pipeline": "lung_seg",
                "model": "lung_seg",
                "version": "1",
                "destinations": ["pacs"],
            }
        ]
    }
)


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'index.sqlite'}")
    database.create_schema()
    return database


def _receive(
    db: Database,
    n: int,
    *,
    association: str | None,
    expected: int | None = None,
    series_uid: str = "1.2.3.4",
    modality: str = "CT",
) -> None:
    for k in range(n):
        store(
            db,
            ct_record(f"{series_uid}.{k + 1}", series_uid, expected=expected, modality=modality),
            association=association,
        )


def _watcher(db: Database, quiet: float) -> CompletenessWatcher:
    return CompletenessWatcher(db, Dispatcher(RULES), quiet_period_s=quiet)


def test_series_waits_for_its_association_then_the_quiet_period(db: Database) -> None:
    open_association(db, "a1", "ORTHANC")
    _receive(db, 3, association="a1")
    assert _watcher(db, 0).poll() == 0  # association still open
    close_association(db, "a1")
    assert _watcher(db, 3600).poll() == 0  # quiet period not over
    assert _watcher(db, 0).poll() == 1
    with db.session() as session:
        series = session.scalars(select(Series)).one()
        assert series.state == SeriesState.ROUTED
        [job] = session.scalars(select(Job)).all()
        assert (job.state, job.rule_name, job.destinations) == (JobState.PENDING, "ct", ["pacs"])
    assert _watcher(db, 0).poll() == 0  # routed once only


def test_known_instance_count_completes_without_waiting(db: Database) -> None:
    open_association(db, "a1", "ORTHANC")
    _receive(db, 2, association="a1", expected=3)
    assert _watcher(db, 3600).poll() == 0
    _receive(db, 1, association="a1", expected=3, series_uid="1.2.3.4")
    # The third instance repeats uid .1 (a re-send): still 2 distinct instances.
    assert _watcher(db, 3600).poll() == 0
    store(db, ct_record("1.2.3.4.3", expected=3), association="a1")
    assert _watcher(db, 3600).poll() == 1


def test_unrouted_series_makes_no_job(db: Database) -> None:
    _receive(db, 2, association=None, modality="MR")
    assert _watcher(db, 0).poll() == 1
    with db.session() as session:
        assert session.scalars(select(Job)).all() == []


def test_claims_are_exclusive_and_recovered_after_a_crash(db: Database) -> None:
    _receive(db, 2, association=None)
    _watcher(db, 0).poll()
    job = claim_next(db)
    assert job is not None
    assert claim_next(db) is None  # leased
    transition(db, job.id, JobState.RUNNING, "started", count_attempt=True)
    # The process dies here. At the next start the lease is cleared and the job resumes.
    assert recover_associations(db) == 0
    assert recover_jobs(db) == 1
    again = claim_next(db)
    assert again is not None
    assert (again.id, again.state) == (job.id, JobState.RUNNING)
    release(db, again.id)


def test_exporting_job_waits_for_its_retry_time(db: Database) -> None:
    _receive(db, 1, association=None)
    _watcher(db, 0).poll()
    job = claim_next(db)
    assert job is not None
    later = utcnow() + dt.timedelta(hours=1)
    transition(db, job.id, JobState.EXPORTING, "retry later", not_before=later)
    release(db, job.id)
    assert claim_next(db) is None
    shown = get_job(db, job.id)
    assert shown is not None
    assert [e.state for e in shown.events] == [JobState.PENDING, JobState.EXPORTING]
    assert shown.not_before == later


def test_final_states_are_final() -> None:
    assert {s for s in JobState if s.is_final} == {
        JobState.DONE,
        JobState.FAILED,
        JobState.REJECTED,
        JobState.DEAD,
    }


def test_instance_after_routing_is_kept_but_not_processed_again_by_default(
    db: Database,
) -> None:
    _receive(db, 2, association=None)
    assert _watcher(db, 0).poll() == 1
    assert store(db, ct_record("1.2.3.4.1")) == "resent"  # the same instance: nothing changes
    assert _watcher(db, 0).poll() == 0
    assert store(db, ct_record("1.2.3.4.99")) == "reopened"
    assert _watcher(db, 0).poll() == 1  # completed again, and the rule (on_growth: ignore) ...
    with db.session() as session:
        series = session.scalars(select(Series)).one()
        assert (series.instance_count, series.state) == (3, SeriesState.ROUTED)
        assert len(session.scalars(select(Job)).all()) == 1  # ... keeps its first result


def test_instance_resent_under_another_series_moves_there(db: Database) -> None:
    _receive(db, 2, association=None, series_uid="1.2.3.4")
    store(db, ct_record("1.2.3.4.1", "1.2.3.5"))
    with db.session() as session:
        counts = {s.series_instance_uid: s.instance_count for s in session.scalars(select(Series))}
    assert counts == {"1.2.3.4": 1, "1.2.3.5": 1}
