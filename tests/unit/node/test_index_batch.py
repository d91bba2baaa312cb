"""Indexing received instances in groups: both statement paths write the same rows, with the same
outcomes, as one-by-one indexing would."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from node.store.database import Database
from node.store.index import InstanceRecord, Received, record_instances
from node.store.models import Series, SeriesState


def _record(sop: str, series: str) -> InstanceRecord:
    return InstanceRecord(
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        series_instance_uid=series,
        study_instance_uid="1.2.3.4",
        transfer_syntax_uid="1.2.840.10008.1.2",
        routing_attributes={"Modality": "CT", "ImageType": ["ORIGINAL", "PRIMARY"]},
        expected_count=None,
    )


def _run(tmp_path: Path, *, portable: bool) -> tuple[list[str], list[Any], list[Any]]:
    db = Database(f"sqlite:///{tmp_path / 'index.sqlite'}")
    db.create_schema()
    outcomes: list[str] = []
    outcomes += record_instances(
        db,
        [
            Received(_record("1.1", "5.1"), "a/1", 10, None, "SCU"),
            Received(_record("1.2", "5.1"), "a/2", 11, None, "SCU"),
        ],
        portable=portable,
    )
    # Re-sent under another series: it moves there.
    outcomes += record_instances(
        db, [Received(_record("1.1", "5.2"), "b/1", 12, None, "OTHER")], portable=portable
    )
    with db.session() as session:
        session.execute(update(Series).values(state=SeriesState.ROUTED))
    # A routed series: re-sent instance (resent), then a new one (reopened), in one batch.
    outcomes += record_instances(
        db,
        [
            Received(_record("1.2", "5.1"), "a/2", 11, None, "SCU"),
            Received(_record("1.3", "5.1"), "a/3", 13, None, "SCU"),
        ],
        portable=portable,
    )
    db.dispose()
    with sqlite3.connect(tmp_path / "index.sqlite") as connection:
        series = list(
            connection.execute(
                "SELECT series_instance_uid, state, calling_ae_title, attributes, instance_count, "
                "length(first_received_at), study_pending FROM series ORDER BY id"
            )
        )
        instances = list(
            connection.execute(
                "SELECT sop_instance_uid, series_id, path, size, length(received_at) "
                "FROM instances ORDER BY id"
            )
        )
    return outcomes, series, instances


@pytest.mark.parametrize("portable", [False, True], ids=["driver", "core"])
def test_group_indexing_outcomes_and_rows(tmp_path: Path, portable: bool) -> None:
    outcomes, series, instances = _run(tmp_path, portable=portable)
    assert outcomes == ["added", "added", "added", "resent", "reopened"]
    attributes = '{"Modality": "CT", "ImageType": ["ORIGINAL", "PRIMARY"]}'
    assert series == [
        ("5.1", "receiving", "SCU", attributes, 2, 26, 0),
        ("5.2", "routed", "OTHER", attributes, 1, 26, 0),
    ]
    assert instances == [
        ("1.1", 2, "b/1", 12, 26),
        ("1.2", 1, "a/2", 11, 26),
        ("1.3", 1, "a/3", 13, 26),
    ]


def test_driver_and_core_statements_write_the_same_rows(tmp_path: Path) -> None:
    (tmp_path / "driver").mkdir()
    (tmp_path / "core").mkdir()
    assert _run(tmp_path / "driver", portable=False) == _run(tmp_path / "core", portable=True)
