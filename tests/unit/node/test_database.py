"""The index database: schema creation on an existing file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from node.errors import StoreError
from node.store.database import Database


def test_an_index_from_an_older_build_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    with sqlite3.connect(path) as old:
        old.execute("CREATE TABLE associations (id VARCHAR(36) PRIMARY KEY, calling_ae_title TEXT)")
    db = Database(f"sqlite:///{path}")
    with pytest.raises(StoreError, match=r"'associations' lacks .*released"):
        db.create_schema()
    db.dispose()


def test_creating_the_schema_twice_is_harmless(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'index.sqlite'}")
    db.create_schema()
    db.create_schema()
    db.dispose()
