"""Lung nodule detection on chest CT: a 2.5D U-Net that segments nodules, and what the node
makes of its output (candidates, measurements, an uncalibrated risk score).

The network sees one slice with its neighbours (``2 * CONTEXT_SLICES + 1`` channels) and gives
a nodule logit per pixel; the node turns the stack of them into candidates. The preprocessing
and the candidate extraction here are shared with the training script
(``training/nodule_det/train.py`` imports this module), so the node feeds the network exactly
what it was trained on.

Steps of :meth:`NoduleDetection.run`:

1. window the Hounsfield units to :data:`HU_WINDOW`, scale to ``[0, 1]`` and resize every slice
   to :data:`INPUT_SIZE` (:func:`node.pipelines.lung_seg.preprocess`);
2. give each slice its neighbours as channels (the first and last slice repeat themselves);
3. ``backend.infer`` in batches of :data:`BATCH_SIZE` (input ``"image"``
   ``(batch, 3, 256, 256)``, output ``"logits"`` ``(batch, 1, 256, 256)``);
4. resize each logit map back to the slice's rows and columns (linear) and apply the sigmoid;
5. candidates: 3D components (face-connected) of probability at least :data:`THRESHOLD`,
   keeping those of at least :data:`MIN_VOLUME_MM3` whose surroundings are aerated lung (at
   least :data:`MIN_AIR_FRACTION` of a :data:`AIR_SHELL_MM` mm in-plane shell below
   :data:`AIR_HU`), at most :data:`MAX_DETECTIONS`, most probable first;
6. per candidate: its segmentation (one SEG segment each), centroid and extent in patient
   millimetres, long and short axis, volume, mean HU (:mod:`node.pipelines.measurements`), its
   probability (the highest pixel probability inside it) and :func:`risk_score`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from node.assembly.volume import Volume
from node.backends.base import Backend
from node.errors import NotAccepted, PipelineError
from node.pipelines.explain import occlusion_heat_map
from node.pipelines.findings import (
    CodedConcept,
    Detection,
    Findings,
    HeatMap,
    LabelMap,
    Measurement,
    SegmentDescription,
)
from node.pipelines.lung_seg import HU_WINDOW, resize_slices
from node.pipelines.lung_seg import preprocess as window_and_resize
from node.pipelines.measurements import RegionMeasurements, measure_region, slice_weights_mm
from node.pipelines.requirements import require_one_orientation, require_square_pixels

__all__ = [
    "ABNORMAL_STRUCTURE",
    "AIR_HU",
    "AIR_SHELL_MM",
    "BATCH_SIZE",
    "CONTEXT_SLICES",
    "HU_WINDOW",
    "INPUT_NAME",
    "INPUT_SIZE",
    "LUNG",
    "MAX_DETECTIONS",
    "MAX_EXPLAINED",
    "MIN_AIR_FRACTION",
    "MIN_VOLUME_MM3",
    "NODULE",
    "NO_UNITS",
    "OUTPUT_NAME",
    "PROBABILITY",
    "RISK_SCORE",
    "SALIENCY",
    "THRESHOLD",
    "Candidate",
    "NoduleDetection",
    "find_candidates",
    "preprocess",
    "probability_map",
    "risk_score",
    "stack_neighbours",
]

#: ``(rows, columns)`` every slice is resized to before the network.
INPUT_SIZE: tuple[int, int] = (256, 256)
#: Neighbours on each side given to the network as extra channels.
CONTEXT_SLICES = 1
#: Name of the network's input tensor, ``(batch, 3, rows, columns)`` float32.
INPUT_NAME = "image"
#: Name of the network's output tensor, ``(batch, 1, rows, columns)`` float32 logits.
OUTPUT_NAME = "logits"
#: Slices sent to the backend per call.
BATCH_SIZE = 16
#: Pixels with a nodule probability at least this are nodule.
THRESHOLD = 0.5
#: Candidates smaller than this (mm³; a sphere of about 3.9 mm) are dropped.
MIN_VOLUME_MM3 = 30.0
#: At most this many candidates are reported, the most probable first.
MAX_DETECTIONS = 10
#: The in-plane shell around a candidate that must be aerated lung (mm) ...
AIR_SHELL_MM = 5.0
#: ... below this attenuation (HU) ...
AIR_HU = -600.0
#: ... for at least this fraction of its voxels (a nodule lies in lung, not in the mediastinum).
MIN_AIR_FRACTION = 0.3

NODULE = CodedConcept("27925004", "SCT", "Nodule")
LUNG = CodedConcept("39607008", "SCT", "Lung")
ABNORMAL_STRUCTURE = CodedConcept("49755003", "SCT", "Morphologically Abnormal Structure")
PROBABILITY = CodedConcept("122157", "DCM", "Probability")
NO_UNITS = CodedConcept("1", "UCUM", "no units")
SALIENCY = CodedConcept("130404", "DCM", "Saliency")
#: Nodules explained per series (the most probable first) ...
MAX_EXPLAINED = 3
#: ... with an occluding mask of this many network pixels (12.5 mm) ...
OCCLUSION_MASK_PX = 8
#: ... moved over the nodule and this many pixels around it.
OCCLUSION_MARGIN_PX = 16
#: A local code (coding scheme ``99PACSAI``, this project's): no standard concept says
#: "uncalibrated", and the score must not be read as a probability of cancer.
RISK_SCORE = CodedConcept("RISK-UNCAL", "99PACSAI", "Malignancy risk score, uncalibrated")

#: Diameter (mm) at which :func:`risk_score` is 0.5, and its spread (mm).
_RISK_MIDPOINT_MM = 8.0
_RISK_SPREAD_MM = 2.0


def stack_neighbours(slices: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Give each slice its neighbours as channels.

    Parameters
    ----------
    slices
        ``(slices, 1, rows, columns)``, in slice order.

    Returns
    -------
    numpy.ndarray
        ``(slices, 2 * CONTEXT_SLICES + 1, rows, columns)``: channel ``CONTEXT_SLICES`` is the
        slice itself, lower channels the slices before it; indices past either end repeat the
        end slice.
    """
    count = slices.shape[0]
    offsets = range(-CONTEXT_SLICES, CONTEXT_SLICES + 1)
    index = np.clip(np.arange(count)[:, None] + np.array(list(offsets))[None, :], 0, count - 1)
    return np.ascontiguousarray(slices[index, 0], dtype=np.float32)


def preprocess(hu: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    """CT slices in HU ``(slices, rows, columns)`` → network input ``(slices, 3, 256, 256)``."""
    return stack_neighbours(window_and_resize(hu, INPUT_SIZE))


def probability_map(
    logits: npt.NDArray[np.floating], shape: tuple[int, int]
) -> npt.NDArray[np.float32]:
    """Logits ``(slices, 1, 256, 256)`` → nodule probability at the slices' own size.

    The logits are resized (linear) and then passed through the sigmoid.
    """
    resized = resize_slices(np.asarray(logits[:, 0], dtype=np.float32), shape)
    probability: npt.NDArray[np.float32] = (1.0 / (1.0 + np.exp(-resized))).astype(np.float32)
    return probability


def risk_score(long_axis_mm: float, short_axis_mm: float) -> float:
    """An uncalibrated malignancy-risk score in ``[0, 1]`` from the nodule's size alone.

    A logistic function of the mean of the long and short axis, 0.5 at 8 mm (for solid nodules
    on a baseline screening CT, Lung-RADS v2022 puts 6 to 8 mm in category 3 and 8 to 15 mm in
    4A), rising over about 2 mm. It is not learned from outcomes and not calibrated: it ranks
    bigger nodules higher and nothing more. Not for clinical use.
    """
    mean_diameter = (long_axis_mm + short_axis_mm) / 2
    return 1.0 / (1.0 + math.exp(-(mean_diameter - _RISK_MIDPOINT_MM) / _RISK_SPREAD_MM))


@dataclass(frozen=True, slots=True)
class Candidate:
    """One candidate nodule: its voxels, probability and measurements."""

    mask: npt.NDArray[np.bool_]
    probability: float
    measured: RegionMeasurements


def find_candidates(
    probability: npt.NDArray[np.float32], volume: Volume, *, threshold: float = THRESHOLD
) -> list[Candidate]:
    """Candidates in a probability map on ``volume``'s grid (see the module docs, step 5).

    Returns
    -------
    list of Candidate
        At most :data:`MAX_DETECTIONS`, most probable first (ties: larger first).
    """
    mask = probability >= threshold
    labels, count = ndimage.label(mask)
    if count == 0:
        return []
    row_mm, col_mm = volume.spacing[1], volume.spacing[2]
    # A cheap first cut on voxel counts (at the largest slice spacing, so none is lost).
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    largest_voxel_mm3 = row_mm * col_mm * float(slice_weights_mm(volume).max())
    found: list[Candidate] = []
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None or sizes[index] * largest_voxel_mm3 < MIN_VOLUME_MM3:
            continue
        if not _in_aerated_lung(labels, index, box, volume):
            continue
        region = np.zeros(mask.shape, dtype=bool)
        region[box] = labels[box] == index
        measured = measure_region(region, volume)
        if measured.volume_ml * 1000.0 < MIN_VOLUME_MM3:
            continue
        peak = float(probability[box][labels[box] == index].max())
        found.append(Candidate(mask=region, probability=peak, measured=measured))
    found.sort(key=lambda c: (-c.probability, -c.measured.volume_ml))
    return found[:MAX_DETECTIONS]


def _in_aerated_lung(
    labels: npt.NDArray[np.int32], index: int, box: tuple[slice, ...], volume: Volume
) -> bool:
    """Whether at least :data:`MIN_AIR_FRACTION` of component ``index``'s in-plane shell is air."""
    row_mm, col_mm = volume.spacing[1], volume.spacing[2]
    grow_r, grow_c = math.ceil(AIR_SHELL_MM / row_mm), math.ceil(AIR_SHELL_MM / col_mm)
    rows, cols = labels.shape[1:]
    window = (
        box[0],
        slice(max(0, box[1].start - grow_r), min(rows, box[1].stop + grow_r)),
        slice(max(0, box[2].start - grow_c), min(cols, box[2].stop + grow_c)),
    )
    inside = labels[window] == index
    yy, xx = np.ogrid[-grow_r : grow_r + 1, -grow_c : grow_c + 1]
    disc = (yy * row_mm) ** 2 + (xx * col_mm) ** 2 <= AIR_SHELL_MM**2
    shell = ndimage.binary_dilation(inside, structure=disc[np.newaxis]) & ~inside
    if not shell.any():
        return False
    return float((volume.array[window][shell] < AIR_HU).mean()) >= MIN_AIR_FRACTION


def _segment(number: int) -> SegmentDescription:
    return SegmentDescription(
        label=number,
        name=f"Nodule {number}",
        category=ABNORMAL_STRUCTURE,
        property_type=NODULE,
        rgb=(255, 140, 0),
    )


class NoduleDetection:
    """Finds solid lung nodules on an axial chest CT (see the module docs).

    What series the model is for is its card's to say (the intended-use guard checks it
    first). :meth:`check` adds what this implementation needs whatever the card: one slice
    orientation, square pixels with the same PixelSpacing on every slice, and at least
    ``2 * CONTEXT_SLICES + 1`` slices (each slice is seen with its neighbours).
    """

    name = "nodule_det"

    def check(self, volume: Volume) -> None:
        """Raise :class:`node.errors.NotAccepted` if this implementation cannot take ``volume``.

        Raises
        ------
        NotAccepted
            For mixed orientations, non-square or varying pixel spacing, or too few slices.
        """
        require_one_orientation(volume)
        if volume.shape[0] < 2 * CONTEXT_SLICES + 1:
            raise NotAccepted(
                f"{volume.shape[0]} slice(s): the detector needs a slice and its "
                f"{CONTEXT_SLICES} neighbour(s) on each side"
            )
        require_square_pixels(volume)

    def probability(
        self, volume: Volume, backend: Backend, model: str, version: str
    ) -> npt.NDArray[np.float32]:
        """The nodule probability of every voxel of ``volume`` (steps 1 to 4).

        Raises
        ------
        PipelineError
            If the backend's output is missing or not shaped as declared.
        """
        slices, rows, cols = volume.array.shape
        inputs = preprocess(volume.array)
        chunks: list[npt.NDArray[np.float32]] = []
        for start in range(0, slices, BATCH_SIZE):
            batch = inputs[start : start + BATCH_SIZE]
            logits = backend.infer(model, version, {INPUT_NAME: batch}).get(OUTPUT_NAME)
            expected = (batch.shape[0], 1, *INPUT_SIZE)
            if logits is None or tuple(logits.shape) != expected:
                got = None if logits is None else tuple(logits.shape)
                raise PipelineError(
                    f"backend output {OUTPUT_NAME!r} has shape {got}, expected {expected}"
                )
            chunks.append(probability_map(logits, (rows, cols)))
        return np.concatenate(chunks)

    def explain(
        self, volume: Volume, backend: Backend, model: str, version: str, findings: Findings
    ) -> tuple[HeatMap, ...]:
        """Occlusion sensitivity of the :data:`MAX_EXPLAINED` most probable nodules.

        For each, on the slice where it is largest: how much hiding each region (a Gaussian
        mask of :data:`OCCLUSION_MASK_PX` network pixels, within :data:`OCCLUSION_MARGIN_PX`
        of the nodule) lowers the network's mean probability over the nodule's pixels
        (:func:`node.pipelines.explain.occlusion_heat_map`). One map, at the network's
        256x256, the maximum over the nodules; empty when nothing was found.
        """
        if not findings.detections or not findings.label_maps:
            return ()
        labels = findings.label_maps[0].array
        inputs = preprocess(volume.array)
        heat = np.zeros((volume.shape[0], *INPUT_SIZE), dtype=np.float32)
        explained: list[str] = []
        for detection in findings.detections[:MAX_EXPLAINED]:
            mask = labels == detection.label
            k = int(np.argmax(mask.sum(axis=(1, 2))))
            small = resize_slices(mask[k : k + 1].astype(np.float32), INPUT_SIZE)[0] >= 0.5
            if not small.any():
                continue
            rows, cols = np.nonzero(small)
            box = (
                max(0, int(rows.min()) - OCCLUSION_MARGIN_PX),
                min(INPUT_SIZE[0] - 1, int(rows.max()) + OCCLUSION_MARGIN_PX),
                max(0, int(cols.min()) - OCCLUSION_MARGIN_PX),
                min(INPUT_SIZE[1] - 1, int(cols.max()) + OCCLUSION_MARGIN_PX),
            )

            def score(
                batch: npt.NDArray[np.float32], where: npt.NDArray[np.bool_] = small
            ) -> npt.NDArray[np.float32]:
                logits = backend.infer(model, version, {INPUT_NAME: batch})[OUTPUT_NAME]
                probability = 1.0 / (1.0 + np.exp(-logits[:, 0]))
                scores: npt.NDArray[np.float32] = probability[:, where].mean(axis=1, keepdims=True)
                return scores.astype(np.float32)

            drop = occlusion_heat_map(
                score, inputs[k], target=0, mask_size=OCCLUSION_MASK_PX, box=box
            )
            heat[k] = np.maximum(heat[k], drop)
            explained.append(detection.tracking_id)
        if not explained:
            return ()
        return (
            HeatMap(
                array=heat,
                label="OCCLUSION",
                description=f"Occlusion sensitivity of {', '.join(explained)}"[:64],
                method=SALIENCY,
                explains=",".join(explained),
            ),
        )

    def run(self, volume: Volume, backend: Backend, model: str, version: str) -> Findings:
        """Find nodules on ``volume`` with ``model`` at ``version`` through ``backend``.

        Returns
        -------
        Findings
            One label map (label ``n`` = nodule ``n``, most probable first) and one detection
            per nodule, referencing its label; when nothing was found, no label map and
            Nodule in ``absent``.
        """
        candidates = find_candidates(self.probability(volume, backend, model, version), volume)
        label_map = np.zeros(volume.shape, dtype=np.uint8)
        detections: list[Detection] = []
        for number, candidate in enumerate(candidates, start=1):
            label_map[candidate.mask] = number
            measured = candidate.measured
            score = risk_score(measured.long_axis_mm, measured.short_axis_mm)
            detections.append(
                Detection(
                    tracking_id=f"nodule-{number}",
                    finding_type=NODULE,
                    finding_site=LUNG,
                    center_mm=measured.center_mm,
                    extent_mm=measured.extent_mm,
                    probability=candidate.probability,
                    measurements=(
                        *measured.as_measurements(),
                        Measurement(PROBABILITY, round(candidate.probability, 4), NO_UNITS),
                        Measurement(RISK_SCORE, round(score, 4), NO_UNITS),
                    ),
                    label_map_index=0,
                    label=number,
                )
            )
        label_maps = (
            (LabelMap(label_map, tuple(_segment(n) for n in range(1, len(candidates) + 1))),)
            if candidates
            else ()
        )
        return Findings(
            model_name=model,
            model_version=version,
            label_maps=label_maps,
            detections=tuple(detections),
            absent=() if candidates else (NODULE,),
        )
