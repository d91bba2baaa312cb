"""Held-out evaluation of ``nodule_det`` through the node's own pipeline and backend.

Everything runs :class:`node.pipelines.nodule_det.NoduleDetection` with the node's embedded
backend on the files written to the model repository, on the held-out slab of the real chest CT
(slices 27 to 39: the held-out slices 28 to 38 and one neighbour each side as context; only
detections centred on held-out slices count):

Real scan
    Detections on the unmodified slab: the one within :data:`MATCH_REAL_MM` of the real nodule
    (:data:`training.nodule_det.data.REAL_NODULE`) is the independent check; one within
    :data:`MATCH_REAL_MM` of the uncertain structure is listed apart; every other one is a false
    positive.
Synthetic nodules
    :data:`TRIALS` copies of the slab with :data:`LESIONS_PER_TRIAL` nodules each, drawn as in
    training (:mod:`training.nodule_det.lesions`) but centred on held-out slices 29 to 37, at
    least :data:`SEPARATION_MM` from one another and from the real nodule and the uncertain
    structure. A nodule is found when a detection's centre lies within
    ``max(5 mm, its largest semi-axis)`` of its centre; the volume error compares the
    detection's volume with the drawn mask's (fraction at least 0.5, measured by the same
    Cavalieri estimator). False positives are the detections matching no drawn nodule and
    neither real structure.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from node.assembly.volume import Volume
from node.backends.base import Backend
from node.pipelines.findings import Detection
from node.pipelines.measurements import measure_region, voxel_positions_mm
from node.pipelines.nodule_det import NoduleDetection
from training.nodule_det.data import HELD_OUT, REAL_NODULE, UNCERTAIN_STRUCTURE, Series
from training.nodule_det.lesions import MARGIN_MM, Lesion, insert_lesions, sample_lesion

__all__ = ["LESIONS_PER_TRIAL", "TRIALS", "evaluate", "slab"]

TRIALS = 10
LESIONS_PER_TRIAL = 4
SEPARATION_MM = 30.0
MATCH_REAL_MM = 10.0
HIT_MIN_MM = 5.0


def slab(volume: Volume, start: int, stop: int) -> Volume:
    """Slices ``start`` to ``stop - 1`` of ``volume`` as a volume of their own."""
    first = [float(v) for v in volume.datasets[start].ImagePositionPatient]
    return volume.with_array(
        volume.array[start:stop],
        origin=(first[0], first[1], first[2]),
        datasets=volume.datasets[start:stop],
        positions=volume.positions[start:stop],
    )


def _counted(detection: Detection, volume: Volume, held: tuple[int, int]) -> bool:
    """Whether the detection's centre lies on a held-out slice (within half a spacing)."""
    along = float(np.asarray(detection.center_mm) @ volume.direction[:, 2])
    low = volume.positions[held[0]] - volume.spacing[0] / 2
    high = volume.positions[held[1]] + volume.spacing[0] / 2
    return low <= along <= high


def _distance(a: tuple[float, float, float], b: tuple[float, float, float]) -> float:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)))


def _volume_ml(detection: Detection) -> float:
    return next(m.value for m in detection.measurements if m.name.meaning == "Volume")


def evaluate(
    series: Series, backend: Backend, model: str, version: str, seed: int
) -> dict[str, Any]:
    """Run the held-out evaluation (see the module docs) and return its numbers."""
    pipeline = NoduleDetection()
    start, stop = HELD_OUT[0] - 1, HELD_OUT[-1] + 2
    region = slab(series.volume, start, stop)
    held = (HELD_OUT[0] - start, HELD_OUT[-1] - start)

    real = [
        d
        for d in pipeline.run(region, backend, model, version).detections
        if _counted(d, region, held)
    ]
    real_match = [d for d in real if _distance(d.center_mm, REAL_NODULE) <= MATCH_REAL_MM]
    uncertain = [d for d in real if _distance(d.center_mm, UNCERTAIN_STRUCTURE) <= MATCH_REAL_MM]
    clean_fp = [d for d in real if d not in real_match and d not in uncertain]
    result: dict[str, Any] = {
        "held_out_slices": list(HELD_OUT),
        "real_scan_detections": [_describe(d) for d in real],
        "real_scan_false_positives": len(clean_fp),
        "real_nodule_found": bool(real_match),
        "uncertain_structure_detected": bool(uncertain),
    }
    if real_match:
        best = real_match[0]
        result["real_nodule_distance_mm"] = round(_distance(best.center_mm, REAL_NODULE), 2)
        result["real_nodule"] = _describe(best)

    rng = np.random.default_rng(seed)
    distance = ndimage.distance_transform_edt(series.lung, sampling=series.volume.spacing)
    hits, position_errors, volume_errors, false_positives = 0, [], [], []
    total = 0
    for _trial in range(TRIALS):
        lesions = _trial_lesions(series, distance, rng)
        total += len(lesions)
        values, fraction = insert_lesions(series.volume, lesions, slices=range(start, stop))
        trial = region.with_array(values)
        found = [
            d
            for d in pipeline.run(trial, backend, model, version).detections
            if _counted(d, trial, held)
        ]
        matched: set[int] = set()
        for lesion in lesions:
            reach = max(HIT_MIN_MM, max(lesion.semi_axes_mm))
            near = [
                (i, _distance(d.center_mm, lesion.center_mm))
                for i, d in enumerate(found)
                if _distance(d.center_mm, lesion.center_mm) <= reach
            ]
            if not near:
                continue
            index, error = min(near, key=lambda item: item[1])
            matched.add(index)
            hits += 1
            position_errors.append(error)
            drawn = measure_region(_lesion_mask(lesion, fraction, trial), trial).volume_ml
            volume_errors.append((_volume_ml(found[index]) - drawn) / drawn)
        others = [
            d
            for i, d in enumerate(found)
            if i not in matched
            and _distance(d.center_mm, REAL_NODULE) > MATCH_REAL_MM
            and _distance(d.center_mm, UNCERTAIN_STRUCTURE) > MATCH_REAL_MM
        ]
        false_positives.append(len(others))
    result.update(
        {
            "synthetic_trials": TRIALS,
            "synthetic_nodules": total,
            "synthetic_found": hits,
            "synthetic_sensitivity": round(hits / total, 4),
            "synthetic_false_positives_per_slab": round(float(np.mean(false_positives)), 3),
            "synthetic_median_position_error_mm": _median(position_errors),
            "synthetic_median_abs_volume_error": _median([abs(e) for e in volume_errors]),
            "synthetic_max_abs_volume_error": round(
                max((abs(e) for e in volume_errors), default=0.0), 4
            ),
        }
    )
    return result


def _median(values: list[float]) -> float:
    return round(float(np.median(values)), 4) if values else math.nan


def _describe(detection: Detection) -> dict[str, Any]:
    return {
        "center_mm": [round(v, 1) for v in detection.center_mm],
        "probability": round(detection.probability, 4),
        **{m.name.meaning: m.value for m in detection.measurements},
    }


def _lesion_mask(lesion: Lesion, fraction: np.ndarray, volume: Volume) -> np.ndarray:
    """The drawn mask of one lesion: fraction at least 0.5 near its centre."""
    mask = fraction >= 0.5
    index = np.argwhere(mask)
    if len(index) == 0:
        return mask
    positions = voxel_positions_mm(volume, index)
    near = np.linalg.norm(positions - np.asarray(lesion.center_mm), axis=1) <= lesion.reach_mm
    own = np.zeros(mask.shape, dtype=bool)
    own[tuple(index[near].T)] = True
    return own


def _trial_lesions(
    series: Series, distance: npt.NDArray[np.float64], rng: np.random.Generator
) -> list[Lesion]:
    """Up to :data:`LESIONS_PER_TRIAL` lesions centred on held-out slices 29 to 37.

    ``distance`` is each voxel's distance (mm) to the lung's edge.
    """
    volume = series.volume
    lesions: list[Lesion] = []
    attempts = 0
    while len(lesions) < LESIONS_PER_TRIAL and attempts < 200:
        attempts += 1
        shape = sample_lesion(rng, (0.0, 0.0, 0.0))
        spots = np.argwhere(distance >= shape.reach_mm + MARGIN_MM)
        spots = spots[(spots[:, 0] >= HELD_OUT[1]) & (spots[:, 0] <= HELD_OUT[-2])]
        if len(spots) == 0:
            continue
        spot = spots[rng.integers(len(spots))]
        center = voxel_positions_mm(volume, spot[np.newaxis])[0]
        taken = [REAL_NODULE, UNCERTAIN_STRUCTURE, *(les.center_mm for les in lesions)]
        if min(_distance(tuple(center), other) for other in taken) < SEPARATION_MM:
            continue
        lesions.append(
            dataclasses.replace(
                shape, center_mm=(float(center[0]), float(center[1]), float(center[2]))
            )
        )
    return lesions
