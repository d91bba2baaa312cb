"""Fixtures for every test: where the shared real DICOM data is."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from tests.paths import DATA_ENV, shared_data_root

pytest_plugins = ["tests.phi_guard", "pytester"]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the shared DICOM test data. A missing folder fails the test, never skips it."""
    root = shared_data_root()
    if not (root / "MANIFEST.md").is_file():
        pytest.fail(f"shared test data not found at {root} (set {DATA_ENV} to its folder)")
    return root


@pytest.fixture(scope="session")
def lidc_dir(shared_data: Path) -> Path:
    """The LIDC chest CT series (55 slices, a different FrameOfReferenceUID on each)."""
    return shared_data / "fnndsc-data" / "LIDC-IDRI-0314_CT_chest_every5th_slice"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Undo what a test's ``configure_logging`` did to the process-wide logging set-up."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()
