"""The lung segmentation pipeline: what it accepts, and what it finds on a real chest CT.

What series the model is for (modality, body part, field of view, ...) is its card's to say:
tests/unit/models/test_intended_use.py checks those refusals.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import numpy.typing as npt
import pytest

from node.assembly.volume import Anomaly, AnomalyKind, Volume
from node.backends.torch import TorchBackend
from node.errors import NotAccepted
from node.pipelines.base import Pipeline
from node.pipelines.lung_seg import LungSegmentation


def _dice(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def _tilted(degrees: float) -> npt.NDArray[np.float64]:
    """Direction cosines of slices tilted about the patient's left-right axis."""
    t = math.radians(degrees)
    row, col = np.array([1.0, 0.0, 0.0]), np.array([0.0, math.cos(t), -math.sin(t)])
    return np.stack([row, col, np.cross(row, col)], axis=1)


def test_is_a_pipeline() -> None:
    pipeline: Pipeline = LungSegmentation()
    assert pipeline.name == "lung_seg"


def test_lidc_matches_the_reference(
    lidc: Volume, lidc_reference: npt.NDArray[np.bool_], backend: TorchBackend
) -> None:
    pipeline = LungSegmentation()
    pipeline.check(lidc)  # its inconsistent FrameOfReferenceUIDs do not matter per slice
    findings = pipeline.run(lidc, backend, "lung_seg", "1")
    assert (findings.model_name, findings.model_version) == ("lung_seg", "1")
    (label_map,) = findings.label_maps
    assert label_map.array.dtype == np.uint8
    assert label_map.array.shape == lidc.array.shape
    assert set(np.unique(label_map.array)) == {0, 1}
    (segment,) = label_map.segments
    assert (segment.label, segment.name) == (1, "Lung")
    assert (segment.property_type.value, segment.property_type.scheme) == ("39607008", "SCT")
    assert (segment.category.value, segment.category.scheme) == ("123037004", "SCT")
    assert _dice(label_map.array == 1, lidc_reference) >= 0.9


def test_any_slice_size(lidc: Volume, backend: TorchBackend) -> None:
    cropped = dataclasses.replace(lidc, array=np.ascontiguousarray(lidc.array[20:26, 40:470, 30:]))
    findings = LungSegmentation().run(cropped, backend, "lung_seg", "1")
    mask = findings.label_maps[0].array
    assert mask.shape == (6, 430, 482)
    assert mask.sum() > 10000


def test_accepts_gantry_tilt_and_irregular_spacing(lidc: Volume) -> None:
    tilted = dataclasses.replace(
        lidc,
        direction=_tilted(18.5),
        anomalies=(
            Anomaly(AnomalyKind.GANTRY_TILT, "tilted"),
            Anomaly(AnomalyKind.IRREGULAR_SPACING, "irregular"),
            Anomaly(AnomalyKind.MISSING_SLICES, "gap"),
        ),
    )
    LungSegmentation().check(tilted)


def test_rejects_mixed_orientations(lidc: Volume) -> None:
    mixed = dataclasses.replace(
        lidc, anomalies=(Anomaly(AnomalyKind.MIXED_ORIENTATIONS, "2 orientations"),)
    )
    with pytest.raises(NotAccepted, match="orientations"):
        LungSegmentation().check(mixed)


def test_rejects_non_square_pixels(lidc: Volume) -> None:
    with pytest.raises(NotAccepted, match="square"):
        LungSegmentation().check(dataclasses.replace(lidc, spacing=(5.0, 0.78125, 0.9)))
