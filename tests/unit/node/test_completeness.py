"""Completeness from explicit signals, series growth after routing, and study-level rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from node.assembly.watcher import CompletenessWatcher
from node.routing.dispatch import Dispatcher
from node.routing.rules import RuleSet
from node.store.database import Database
from node.store.index import close_association, open_association, series_instance_paths
from node.store.models import Job, Series, SeriesState
from tests.unit.node.records import ct_record, store

HOUR = 3600.0


def rules(**rule: Any) -> RuleSet:
    """One CT rule, with ``rule``'s extra keys."""
    return RuleSet.model_validate(
        {
            "rules": [
                {
                    "name": "ct",
                    "match": {"modality": ["CT"]},
                    "pipeline": "lung_seg",
                    "model": "lung_seg",
                    "version": "1",
                    "destinations": ["pacs"],
                    **rule,
                }
            ]
        }
    )


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'index.sqlite'}")
    database.create_schema()
    return database


def watcher(
    db: Database, ruleset: RuleSet | None = None, quiet: float = HOUR
) -> CompletenessWatcher:
    return CompletenessWatcher(db, Dispatcher(ruleset or rules()), quiet_period_s=quiet)


def send(
    db: Database,
    uids: range,
    *,
    association: str | None,
    series: str = "1.2.3.4",
    study: str = "1.2.3",
    expected: int | None = None,
) -> None:
    for k in uids:
        store(
            db,
            ct_record(f"{series}.{k}", series, expected=expected, study_uid=study),
            association=association,
        )


def jobs(db: Database) -> list[Job]:
    with db.session() as session:
        return list(session.scalars(select(Job).order_by(Job.id)))


def states(db: Database) -> dict[str, SeriesState]:
    with db.session() as session:
        return {s.series_instance_uid: s.state for s in session.scalars(select(Series))}


def test_a_clean_release_completes_at_once(db: Database) -> None:
    open_association(db, "a1", "ORTHANC")
    send(db, range(3), association="a1")
    assert watcher(db).poll() == 0
    close_association(db, "a1", released=True)
    assert watcher(db).poll() == 1  # no quiet period
    assert len(jobs(db)) == 1


def test_an_aborted_association_waits_for_the_quiet_period(db: Database) -> None:
    open_association(db, "a1", "ORTHANC")
    send(db, range(3), association="a1")
    close_association(db, "a1", released=False)
    assert watcher(db).poll() == 0
    assert watcher(db, quiet=0).poll() == 1


def test_two_associations_sending_halves_make_one_job_after_both(db: Database) -> None:
    open_association(db, "a1", "ORTHANC")
    open_association(db, "a2", "ORTHANC")
    send(db, range(0, 5), association="a1")
    send(db, range(5, 10), association="a2")
    close_association(db, "a1", released=True)
    assert watcher(db).poll() == 0  # a2 is still sending the series
    close_association(db, "a2", released=True)
    assert watcher(db).poll() == 1
    [job] = jobs(db)
    assert len(series_instance_paths(db, job.series_id, up_to=job.inputs_up_to)) == 10


def test_the_header_count_completes_while_the_association_is_open(db: Database) -> None:
    open_association(db, "a1", "ORTHANC")
    send(db, range(2), association="a1", expected=3)
    assert watcher(db).poll() == 0
    send(db, range(2, 3), association="a1", expected=3)
    assert watcher(db).poll() == 1


def test_a_rule_can_announce_the_count(db: Database) -> None:
    counted = rules(expected_instances=4)
    open_association(db, "a1", "ORTHANC")
    send(db, range(3), association="a1")
    assert watcher(db, counted).poll() == 0
    send(db, range(3, 4), association="a1")
    assert watcher(db, counted).poll() == 1


def test_growth_with_reprocess_runs_again_once_per_new_input_set(db: Database) -> None:
    reprocess = rules(on_growth="reprocess")
    send(db, range(3), association=None)
    assert watcher(db, reprocess, quiet=0).poll() == 1
    send(db, range(3), association=None)  # all re-sent: the same inputs
    assert watcher(db, reprocess, quiet=0).poll() == 0
    send(db, range(3, 5), association=None)  # two more
    assert watcher(db, reprocess, quiet=0).poll() == 1
    first, second = jobs(db)
    assert first.input_digest != second.input_digest
    assert first.uid != second.uid  # results of new inputs get new UIDs
    assert len(series_instance_paths(db, first.series_id, up_to=first.inputs_up_to)) == 3
    assert len(series_instance_paths(db, second.series_id, up_to=second.inputs_up_to)) == 5
    assert watcher(db, reprocess, quiet=0).poll() == 0


def test_a_study_rule_waits_for_every_series_of_the_study(db: Database) -> None:
    study_rule = rules(scope="study")
    open_association(db, "ct", "ORTHANC")
    open_association(db, "pet", "ORTHANC")
    send(db, range(3), association="ct", series="1.2.3.4")
    send(db, range(2), association="pet", series="1.2.3.5")
    close_association(db, "ct", released=True)
    assert watcher(db, study_rule).poll() == 1  # the CT series is complete ...
    assert jobs(db) == []  # ... but its study is not
    close_association(db, "pet", released=True)
    assert watcher(db, study_rule).poll() == 2  # the second series, then the study
    [job] = jobs(db)
    assert job.scope == "study"
    assert states(db) == {"1.2.3.4": SeriesState.ROUTED, "1.2.3.5": SeriesState.ROUTED}
    assert watcher(db, study_rule).poll() == 0
    with db.session() as session:
        assert not any(s.study_pending for s in session.scalars(select(Series)))


def test_series_and_study_rules_together(db: Database) -> None:
    both = RuleSet.model_validate(
        {
            "rules": [
                {
                    "name": name,
                    "match": {"modality": ["CT"]},
                    "pipeline": "lung_seg",
                    "model": "lung_seg",
                    "version": "1",
                    "destinations": ["pacs"],
                    "scope": scope,
                    "continue": True,
                }
                for name, scope in (("per-series", "series"), ("per-study", "study"))
            ]
        }
    )
    send(db, range(2), association=None, series="1.2.3.4")
    send(db, range(2), association=None, series="1.2.3.5")
    watcher(db, both, quiet=0).poll()
    made = sorted((job.rule_name, job.scope) for job in jobs(db))
    assert made == [
        ("per-series", "series"),
        ("per-series", "series"),
        ("per-study", "study"),
    ]
