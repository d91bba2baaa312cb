"""Fixtures for the model tests: the shared DICOM data, the LIDC chest CT, the shipped model."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from node.assembly.volume import Volume, load_volume
from node.backends.torch import TorchBackend
from training.lung_seg.labels import reference_lung_mask

REPO = Path(__file__).resolve().parents[3]
MODEL_REPOSITORY = REPO / "model_repository"
LIDC = "fnndsc-data/LIDC-IDRI-0314_CT_chest_every5th_slice"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared test data: ``$PACS_AI_NODE_TEST_DATA``, else ``<repo>/../shared/data``."""
    path = Path(os.environ.get("PACS_AI_NODE_TEST_DATA", REPO.parent / "shared" / "data"))
    if not (path / "MANIFEST.md").is_file():
        pytest.fail(
            f"shared test data not found at {path}: set PACS_AI_NODE_TEST_DATA to the folder "
            "holding MANIFEST.md",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def load_series(shared_data: Path) -> Callable[[str], Volume]:
    """A loader of one series folder of the shared data (every file but the README)."""

    def load(relative: str) -> Volume:
        folder = shared_data / relative
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix != ".md")
        return load_volume(files)

    return load


@pytest.fixture(scope="session")
def lidc(load_series: Callable[[str], Volume]) -> Volume:
    """The LIDC-IDRI-0314 chest CT, 55 slices of 512x512 at 5 mm."""
    return load_series(LIDC)


@pytest.fixture(scope="session")
def lidc_reference(lidc: Volume) -> npt.NDArray[np.bool_]:
    """The reference lung mask of the LIDC chest CT."""
    return reference_lung_mask(lidc.array, lidc.spacing)


@pytest.fixture(scope="session")
def model_repository() -> Path:
    """The model repository shipped in this repo."""
    return MODEL_REPOSITORY


@pytest.fixture(scope="session")
def backend(model_repository: Path) -> TorchBackend:
    """The embedded backend on the shipped model repository."""
    return TorchBackend(model_repository)
