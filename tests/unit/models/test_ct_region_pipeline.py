"""The body-region classifier with the shipped model: real series, its card, its explanation."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from node.assembly.volume import Anomaly, AnomalyKind, Volume
from node.backends.embedded import EmbeddedBackend
from node.errors import NotAccepted
from node.models.guard import check_intended_use
from node.models.repository import ModelRepository
from node.pipelines.base import Explainer
from node.pipelines.ct_region import CLASSES, BodyRegion, canonical

MODEL, VERSION = "ct_region", "1"
HEAD_CT = "dcm_qa_ct/GE_HiSpeedDual_head_CT_gantry_tilt_variable_spacing"
PANCREAS = "pydicom-data-1.0.0/data/explicit_VR-UN.dcm"


@pytest.fixture(scope="module")
def embedded(model_repository: Path) -> EmbeddedBackend:
    return EmbeddedBackend(model_repository)


@pytest.mark.parametrize(
    ("series", "region"),
    [("lidc", "Chest"), (HEAD_CT, "Head"), (PANCREAS, "Abdomen")],
)
def test_classifies_real_series(
    series: str,
    region: str,
    lidc: Volume,
    load_series: Callable[[str], Volume],
    shared_data: Path,
    embedded: EmbeddedBackend,
    model_repository: Path,
) -> None:
    if series == "lidc":
        volume = lidc
    elif series == PANCREAS:
        from node.assembly.volume import load_volume

        volume = load_volume([shared_data / PANCREAS])
    else:
        volume = load_series(series)
    check_intended_use(volume, ModelRepository(model_repository).card(MODEL, VERSION))
    [found] = BodyRegion().run(volume, embedded, MODEL, VERSION).classifications
    assert found.concept.meaning == region
    assert found.probability > 0.5
    assert [c for c, _p in found.probabilities] == list(CLASSES)
    assert sum(p for _c, p in found.probabilities) == pytest.approx(1.0, abs=1e-4)


def test_a_series_stored_upside_down_is_turned(shared_data: Path) -> None:
    from node.assembly.volume import load_volume

    volume = load_volume([shared_data / PANCREAS])  # ImageOrientationPatient 1\0\0\0\-1\0
    turned, flip_rows, flip_cols = canonical(volume)
    assert (flip_rows, flip_cols) == (True, False)
    assert np.array_equal(turned[0], volume.array[0, ::-1, :])


def test_explanation_of_a_short_series_covers_its_slices(
    lidc: Volume, embedded: EmbeddedBackend
) -> None:
    pipeline = BodyRegion()
    assert isinstance(pipeline, Explainer)
    few = lidc.with_array(
        lidc.array[25:28],
        datasets=lidc.datasets[25:28],
        positions=lidc.positions[25:28],
    )
    findings = pipeline.run(few, embedded, MODEL, VERSION)
    [heat] = pipeline.explain(few, embedded, MODEL, VERSION, findings)
    assert heat.array.shape == (3, 64, 64)
    assert heat.array.min() >= 0.0
    assert heat.array.max() <= 1.0
    assert heat.explains == "body-region"
    assert "Chest" in heat.description


def test_check_refuses_mixed_orientations(lidc: Volume) -> None:
    with pytest.raises(NotAccepted, match="orientations"):
        BodyRegion().check(
            dataclasses.replace(lidc, anomalies=(Anomaly(AnomalyKind.MIXED_ORIENTATIONS, "x"),))
        )
