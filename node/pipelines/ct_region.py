"""Body region of a CT series (head, chest or abdomen): a small 2D DenseNet on every slice.

The network classifies each slice; the series gets the class with the highest mean slice
probability, and that mean as its probability. The preprocessing here is shared with the
training script (``training/ct_region/train.py`` imports it).

Steps of :meth:`BodyRegion.run`:

1. turn every slice to the standard display orientation (rows running from the patient's
   front to back, columns from right to left), flipping it when its direction cosines point
   the other way, so that a series stored upside down looks like the ones trained on;
2. window the Hounsfield units to :data:`HU_WINDOW`, scale to ``[0, 1]`` and resize to
   :data:`INPUT_SIZE` (the whole field of view, whatever its size);
3. ``backend.infer`` in batches of :data:`BATCH_SIZE` (input ``"image"`` ``(batch, 1, 64,
   64)``, output ``"logits"`` ``(batch, 3)``), softmax;
4. the class with the highest mean probability over the slices.

Explanations (:meth:`BodyRegion.explain`): occlusion sensitivity of the chosen class on up to
:data:`EXPLAINED_SLICES` slices spread evenly through the series
(:func:`node.pipelines.explain.occlusion_heat_map`), one map for the series.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from node.assembly.volume import Volume
from node.backends.base import Backend
from node.errors import PipelineError
from node.pipelines.explain import occlusion_heat_map
from node.pipelines.findings import Classification, CodedConcept, Findings, HeatMap
from node.pipelines.lung_seg import resize_slices
from node.pipelines.requirements import require_one_orientation

__all__ = [
    "BATCH_SIZE",
    "CLASSES",
    "EXPLAINED_SLICES",
    "HU_WINDOW",
    "INPUT_NAME",
    "INPUT_SIZE",
    "OCCLUSION_MASK_PX",
    "OUTPUT_NAME",
    "BodyRegion",
    "canonical",
    "preprocess",
    "series_probabilities",
    "softmax",
]

#: The classes, in the order of the network's outputs.
CLASSES: tuple[CodedConcept, ...] = (
    CodedConcept("69536005", "SCT", "Head"),
    CodedConcept("816094009", "SCT", "Chest"),
    CodedConcept("818981001", "SCT", "Abdomen"),
)
#: Hounsfield units mapped to 0 and 1 (air to bone: what tells a skull from ribs or a liver).
HU_WINDOW: tuple[float, float] = (-1000.0, 1000.0)
#: ``(rows, columns)`` of the network's input: the whole slice, reduced.
INPUT_SIZE: tuple[int, int] = (64, 64)
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
BATCH_SIZE = 64
#: Side (network pixels) of the occluding mask of the explanation: 16 of 64, a quarter of the
#: field of view.
OCCLUSION_MASK_PX = 16
#: Slices explained, spread evenly from the first to the last (a map of every slice of a long
#: series would cost as many occlusion runs, and a Parametric Map of 1 MB per slice).
EXPLAINED_SLICES = 8
GRADIENT_FREE_SALIENCY = CodedConcept("130404", "DCM", "Saliency")


def canonical(volume: Volume) -> tuple[npt.NDArray[np.float32], bool, bool]:
    """The volume's slices in the standard display orientation, and the flips applied.

    Returns
    -------
    tuple
        ``(slices, rows_flipped, columns_flipped)``: columns are flipped when the row direction
        points to the patient's right (``-x``), rows when the column direction points to the
        front (``-y``); for a coronal or sagittal series the same rule on its own axes.
    """
    row_dir, col_dir = volume.direction[:, 0], volume.direction[:, 1]
    flip_cols = bool(row_dir[int(np.argmax(np.abs(row_dir)))] < 0)
    flip_rows = bool(col_dir[int(np.argmax(np.abs(col_dir)))] < 0)
    array = volume.array
    if flip_rows:
        array = array[:, ::-1, :]
    if flip_cols:
        array = array[:, :, ::-1]
    return np.ascontiguousarray(array, dtype=np.float32), flip_rows, flip_cols


def preprocess(hu: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    """Slices in HU (standard orientation) → the network's input ``(slices, 1, 64, 64)``."""
    low, high = HU_WINDOW
    scaled = (np.clip(np.asarray(hu, dtype=np.float32), low, high) - low) / (high - low)
    return resize_slices(scaled, INPUT_SIZE)[:, np.newaxis]


def softmax(logits: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    """Softmax over the last axis."""
    shifted = np.asarray(logits, dtype=np.float64)
    shifted = np.exp(shifted - shifted.max(axis=-1, keepdims=True))
    probabilities: npt.NDArray[np.float32] = (shifted / shifted.sum(axis=-1, keepdims=True)).astype(
        np.float32
    )
    return probabilities


def series_probabilities(slice_probabilities: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """The series' class probabilities: the mean over its slices."""
    mean: npt.NDArray[np.float64] = np.asarray(slice_probabilities, dtype=np.float64).mean(axis=0)
    return mean


class BodyRegion:
    """Classifies a CT series as head, chest or abdomen (see the module docs).

    The model card says which series it is for; :meth:`check` refuses only what this
    implementation cannot take: mixed orientations (a localizer among the slices).
    """

    name = "ct_region"

    def check(self, volume: Volume) -> None:
        """Raise :class:`node.errors.NotAccepted` for a series mixing slice orientations."""
        require_one_orientation(volume)

    def slice_probabilities(
        self, volume: Volume, backend: Backend, model: str, version: str
    ) -> npt.NDArray[np.float32]:
        """Class probabilities of every slice, ``(slices, classes)``.

        Raises
        ------
        PipelineError
            If the backend's output is missing or not shaped as declared.
        """
        slices, _flip_rows, _flip_cols = canonical(volume)
        inputs = preprocess(slices)
        return np.concatenate(
            [
                softmax(self._logits(inputs[start : start + BATCH_SIZE], backend, model, version))
                for start in range(0, inputs.shape[0], BATCH_SIZE)
            ]
        )

    def run(self, volume: Volume, backend: Backend, model: str, version: str) -> Findings:
        """Classify ``volume``: one classification with every class's probability."""
        probabilities = series_probabilities(
            self.slice_probabilities(volume, backend, model, version)
        )
        chosen = int(np.argmax(probabilities))
        return Findings(
            model_name=model,
            model_version=version,
            classifications=(
                Classification(
                    tracking_id="body-region",
                    concept=CLASSES[chosen],
                    probability=float(probabilities[chosen]),
                    probabilities=tuple(
                        (concept, float(p))
                        for concept, p in zip(CLASSES, probabilities, strict=True)
                    ),
                ),
            ),
        )

    def explain(
        self, volume: Volume, backend: Backend, model: str, version: str, findings: Findings
    ) -> tuple[HeatMap, ...]:
        """Occlusion sensitivity of the chosen class on :data:`EXPLAINED_SLICES` slices (the
        others 0), in the stored orientation.

        The map is at the network's 64x64 when the slices' rows and columns are multiples of
        64, else resized to the slices' own size.
        """
        if not findings.classifications:
            return ()
        decision = findings.classifications[0]
        target = CLASSES.index(decision.concept)
        slices, flip_rows, flip_cols = canonical(volume)
        inputs = preprocess(slices)

        def score(batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
            return softmax(self._logits(batch, backend, model, version))

        count = inputs.shape[0]
        chosen = np.unique(np.linspace(0, count - 1, min(count, EXPLAINED_SLICES)).round())
        heat = np.zeros((count, *INPUT_SIZE), dtype=np.float32)
        for k in chosen.astype(int):
            if score(inputs[k : k + 1])[0, target] > 0:
                heat[k] = occlusion_heat_map(
                    score, inputs[k], target=target, mask_size=OCCLUSION_MASK_PX
                )
        if flip_rows:
            heat = heat[:, ::-1, :]
        if flip_cols:
            heat = heat[:, :, ::-1]
        rows, cols = volume.shape[1:]
        if rows % INPUT_SIZE[0] or cols % INPUT_SIZE[1]:
            heat = np.clip(resize_slices(heat, (rows, cols)), 0.0, 1.0)
        return (
            HeatMap(
                array=np.ascontiguousarray(heat, dtype=np.float32),
                label="OCCLUSION",
                description=f"Occlusion sensitivity of body region {decision.concept.meaning}",
                method=GRADIENT_FREE_SALIENCY,
                explains=decision.tracking_id,
            ),
        )

    @staticmethod
    def _logits(
        batch: npt.NDArray[np.float32], backend: Backend, model: str, version: str
    ) -> npt.NDArray[np.float32]:
        logits = backend.infer(model, version, {INPUT_NAME: batch}).get(OUTPUT_NAME)
        expected = (batch.shape[0], len(CLASSES))
        if logits is None or tuple(logits.shape) != expected:
            got = None if logits is None else tuple(logits.shape)
            raise PipelineError(
                f"backend output {OUTPUT_NAME!r} has shape {got}, expected {expected}"
            )
        return logits
