"""The nodule detector on the real LIDC chest CT, with the shipped model.

A nodule drawn into held-out slices (which the model never trained on) must be found within
5 mm with its volume within 20 %; the real nodule (in the held-out slices too) must be found
where it was written down; the explanation must point at the nodule.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from node.assembly.volume import Anomaly, AnomalyKind, Volume
from node.backends.torch import TorchBackend
from node.errors import NotAccepted
from node.pipelines.base import Explainer, Pipeline
from node.pipelines.findings import Findings
from node.pipelines.nodule_det import NODULE, NoduleDetection, risk_score, stack_neighbours
from training.nodule_det.data import HELD_OUT, REAL_NODULE
from training.nodule_det.evaluate import slab
from training.nodule_det.lesions import Lesion, insert_lesions

MODEL, VERSION = "nodule_det", "1"
#: A smooth solid nodule in the left lung on held-out slice 35 (z = -504.8 mm): 14 x 12 x 12 mm.
DRAWN = Lesion(
    center_mm=(75.0, 170.0, -504.8),
    semi_axes_mm=(7.0, 6.0, 6.0),
    rotation=np.eye(3),
    mean_hu=30.0,
    seed=7,
)


@pytest.fixture(scope="module")
def held_out(lidc: Volume) -> Volume:
    """The held-out slices with one neighbour each side as context."""
    return slab(lidc, HELD_OUT[0] - 1, HELD_OUT[-1] + 2)


@pytest.fixture(scope="module")
def with_nodule(lidc: Volume, held_out: Volume) -> Volume:
    start = HELD_OUT[0] - 1
    values, _fraction = insert_lesions(
        lidc, [DRAWN], slices=range(start, start + len(held_out.datasets))
    )
    return held_out.with_array(values)


@pytest.fixture(scope="module")
def found(with_nodule: Volume, backend: TorchBackend) -> Findings:
    return NoduleDetection().run(with_nodule, backend, MODEL, VERSION)


def _nearest(findings: Findings, point: tuple[float, float, float]) -> tuple[int, float]:
    distances = [math.dist(d.center_mm, point) for d in findings.detections]
    index = int(np.argmin(distances))
    return index, distances[index]


def test_is_a_pipeline_that_explains() -> None:
    pipeline: Pipeline = NoduleDetection()
    assert pipeline.name == "nodule_det"
    assert isinstance(pipeline, Explainer)


def test_finds_a_nodule_drawn_in_held_out_slices(found: Findings) -> None:
    index, distance = _nearest(found, DRAWN.center_mm)
    assert distance <= 5.0, found.detections
    detection = found.detections[index]
    volume_ml = next(m.value for m in detection.measurements if m.name.meaning == "Volume")
    assert abs(volume_ml - DRAWN.ellipsoid_ml) <= 0.2 * DRAWN.ellipsoid_ml, volume_ml
    long_axis = next(m.value for m in detection.measurements if m.name.meaning == "Long axis")
    assert 10.0 <= long_axis <= 18.0
    assert detection.probability >= 0.5
    # Its segment in the label map is the detection's own label.
    [label_map] = found.label_maps
    assert detection.label is not None
    assert (label_map.array == detection.label).any()
    assert [s.label for s in label_map.segments] == [d.label for d in found.detections]


def test_finds_the_real_nodule(held_out: Volume, backend: TorchBackend) -> None:
    findings = NoduleDetection().run(held_out, backend, MODEL, VERSION)
    _index, distance = _nearest(findings, REAL_NODULE)
    assert distance <= 10.0
    # A few false positives on the held-out slices (the card says how many), not a flood.
    low, high = held_out.positions[1] - 2.5, held_out.positions[-2] + 2.5
    counted = [d for d in findings.detections if low <= d.center_mm[2] <= high]
    assert len(counted) <= 5


def test_explanation_points_at_the_nodule(
    with_nodule: Volume, found: Findings, backend: TorchBackend
) -> None:
    index, _distance = _nearest(found, DRAWN.center_mm)
    only = dataclasses.replace(found, detections=(found.detections[index],))
    [heat] = NoduleDetection().explain(with_nodule, backend, MODEL, VERSION, only)
    assert heat.array.shape == (len(with_nodule.datasets), 256, 256)
    assert heat.label == "OCCLUSION"
    assert heat.explains == found.detections[index].tracking_id
    k, row, col = np.unravel_index(int(np.argmax(heat.array)), heat.array.shape)
    origin = np.array([float(v) for v in with_nodule.datasets[k].ImagePositionPatient])
    # Network pixel (row, col) covers source pixels 2 row, 2 row + 1: its centre is +0.5.
    peak = (
        origin
        + (2 * col + 0.5) * 0.78125 * np.array([1, 0, 0])
        + (2 * row + 0.5) * 0.78125 * np.array([0, 1, 0])
    )
    assert math.dist(peak, DRAWN.center_mm) <= 15.0
    assert float(heat.array.max()) > 0.2  # hiding part of it lowers the probability


def test_nothing_found_says_so(lidc: Volume, backend: TorchBackend) -> None:
    above_the_lungs = slab(lidc, 51, 55)  # neck and shoulders: no lung, no nodule
    findings = NoduleDetection().run(above_the_lungs, backend, MODEL, VERSION)
    assert findings.detections == ()
    assert findings.label_maps == ()
    assert findings.absent == (NODULE,)


def test_check_refuses_what_it_cannot_take(lidc: Volume) -> None:
    pipeline = NoduleDetection()
    pipeline.check(lidc)
    with pytest.raises(NotAccepted, match="orientations"):
        pipeline.check(
            dataclasses.replace(
                lidc, anomalies=(Anomaly(AnomalyKind.MIXED_ORIENTATIONS, "localizer"),)
            )
        )
    with pytest.raises(NotAccepted, match="neighbour"):
        pipeline.check(slab(lidc, 0, 2))
    with pytest.raises(NotAccepted, match="square"):
        pipeline.check(dataclasses.replace(lidc, spacing=(5.0, 0.7, 0.9)))


def test_neighbours_and_risk_score() -> None:
    slices = np.arange(4, dtype=np.float32).reshape(4, 1, 1, 1)
    stacked = stack_neighbours(slices)
    assert stacked[:, :, 0, 0].tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 3]]
    assert risk_score(8.0, 8.0) == pytest.approx(0.5)
    assert risk_score(4.0, 4.0) < 0.2 < 0.9 < risk_score(15.0, 13.0)
