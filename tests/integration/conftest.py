"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from node.assembly.volume import Volume, load_volume
from node.store.database import Database
from node.store.spool import Spool
from tests.peers import REPO_ROOT
from tests.triton import Triton, require_triton, start_triton


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


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Triton]:
    """A local tritonserver on the shipped model repository (skipped, or failed in CI, without
    ``make triton-deps``)."""
    require_triton()
    server = start_triton(REPO_ROOT / "model_repository", tmp_path_factory.mktemp("triton"))
    yield server
    server.stop()
