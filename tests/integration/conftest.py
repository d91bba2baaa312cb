"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from node.assembly.volume import Volume, load_volume
from node.store.database import Database
from node.store.spool import Spool


@pytest.fixture
def spool_and_db(tmp_path: Path) -> Iterator[tuple[Spool, Database]]:
    """A fresh spool and index (SQLite), disposed of afterwards."""
    db = Database(f"sqlite:///{tmp_path / 'index.sqlite'}")
    db.create_schema()
    yield Spool(tmp_path / "spool"), db
    db.dispose()


@pytest.fixture(scope="module")
def lidc(lidc_dir: Path) -> Volume:
    """The LIDC chest CT (55 slices) as a volume."""
    return load_volume(sorted(lidc_dir.glob("*.dcm")))
