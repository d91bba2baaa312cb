"""The ``ct_region`` model cards: ``card.yaml`` (what the node checks) and ``MODEL_CARD.md``.

Both are written from one :class:`node.models.card.ModelCard` built from ``metrics.json``;
every metric records its key there. No number is typed by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from node.models.card import InputContract, ModelCard
from node.pipelines.ct_region import CLASSES, HU_WINDOW, INPUT_SIZE, OCCLUSION_MASK_PX
from training import common
from training.common import card_fields
from training.ct_region.data import (
    ABDOMEN_MAX_LUNG_CM2,
    CHEST_MIN_LUNG_CM2,
    HELD_OUT_EVERY,
    HELD_OUT_OFFSET,
    INDEPENDENT,
    SERIES,
)
from training.ct_region.repository import MODEL_NAME, MODEL_VERSION, NETWORK_KWARGS

__all__ = ["INPUT_CONTRACT", "build_card", "render_card", "write_cards"]

#: Any CT series of one orientation the node can assemble: the classifier is meant to say which
#: body region it shows. The limits are this project's choice, not a validated range.
INPUT_CONTRACT = InputContract.model_validate(
    {
        "modalities": ["CT"],
        "body_parts": [],
        "body_part_required": False,
        "orientation": "axial",
        "max_obliquity_deg": 30.0,
        "slices": {"min": 1, "max": 2000},
        "matrix": {"min": 64, "max": 1024},
        "intensity": {
            "units": "HU",
            "percentiles": {"min": -3100.0, "max": 4100.0},
            "bands": [{"name": "air", "high": -500.0, "min_fraction": 0.02}],
        },
    }
)

_SOURCES = {
    SERIES[0][0]: (
        "GitHub neurolabusc/dcm_qa_ct (scan from Aliza Medical Imaging)",
        "BSD-2-Clause",
    ),
    SERIES[1][0]: ("GitHub wasserth/TotalSegmentator", "Apache-2.0"),
    SERIES[2][0]: (
        "TCIA LIDC-IDRI (patient LIDC-IDRI-0314), via GitHub FNNDSC/data",
        "CC BY 3.0 (TCIA); repository Apache-2.0",
    ),
    INDEPENDENT[0][0]: ("GitHub QIICR/dcmqi", "BSD-3-Clause"),
    INDEPENDENT[1][0]: ("PyPI pydicom 3.0.2 test files", "MIT"),
    INDEPENDENT[2][0]: ("PyPI pydicom-data 1.0.0 (a TCIA pancreas CT slice)", "MIT"),
}


def build_card(metrics: dict[str, Any]) -> ModelCard:
    """The machine-readable card of the trained classifier, from ``metrics.json``'s content."""
    trained = metrics["training_slices"]
    return ModelCard.model_validate(
        {
            "name": MODEL_NAME,
            "version": str(metrics["version"]),
            "task": "classification",
            "pipeline": "ct_region",
            "summary": "Says which body region a CT series shows (head, chest or abdomen) from "
            "its slices; a small demonstration model trained on three series.",
            "clinical_use": "not for clinical use",
            "intended_use": "Demonstrating classification results (an SR finding with its "
            "probability) and their explanation maps in the node, on axial CT of the head, "
            "chest or abdomen; not validated on any population.",
            "not_intended_for": [
                "clinical decisions or routing that matters",
                "body regions other than head, chest and abdomen (neck, pelvis, limbs: it "
                "answers one of its three classes anyway)",
                "children, contrast phases or scanners it has not seen",
            ],
            "input": INPUT_CONTRACT.model_dump(),
            "outputs": [
                {
                    "label": index + 1,
                    "name": concept.meaning,
                    "category": {
                        "value": "91723000",
                        "scheme": "SCT",
                        "meaning": "Anatomical Structure",
                    },
                    "property_type": {
                        "value": concept.value,
                        "scheme": concept.scheme,
                        "meaning": concept.meaning,
                    },
                    "rgb": [200, 200, 200],
                }
                for index, concept in enumerate(CLASSES)
            ],
            "training_data": [
                *(
                    {
                        "name": name,
                        "source": _SOURCES[name][0],
                        "licence": _SOURCES[name][1],
                        "role": "training and held-out",
                        "description": f"{trained[name]} training slices; slices k % "
                        f"{HELD_OUT_EVERY} == {HELD_OUT_OFFSET} held out",
                    }
                    for name, _label in SERIES
                ),
                *(
                    {
                        "name": name,
                        "source": _SOURCES[name][0],
                        "licence": _SOURCES[name][1],
                        "role": "evaluation",
                        "description": "another patient and scanner, never trained on",
                    }
                    for name, _label in INDEPENDENT
                ),
            ],
            "labels": {
                "expert_annotation": False,
                "provenance": "from the series' headers (BodyPartExamined HEAD; the "
                "TotalSegmentator abdomen crop; PANCREAS) and, for the chest CT, from its "
                f"reference lung mask: chest with at least {CHEST_MIN_LUNG_CM2:g} cm² of lung, "
                "abdomen below the lungs (training/ct_region/data.py)",
            },
            "metrics": [
                {
                    "name": "Slice accuracy",
                    "dataset": "held-out slices of the training series "
                    f"({metrics['held_out_slices']})",
                    "value": metrics["held_out_accuracy"],
                    "source": "held_out_accuracy",
                },
                {
                    "name": "Slice accuracy",
                    "dataset": "independent slices of other patients "
                    f"({metrics['independent_slices']})",
                    "value": metrics["independent_accuracy"],
                    "source": "independent_accuracy",
                },
            ],
        }
    )


_TEMPLATE = """\
# Model card: `ct_region` version {version}

**NOT FOR CLINICAL USE.** A small demonstration model trained on slices of three series (three
patients). It has not been validated on any population. Its probability is the softmax of a
model trained on very little data: uncalibrated.

## Task

Says which body region an axial CT series shows: head (SCT 69536005), chest (SCT 816094009) or
abdomen (SCT 818981001). Each slice is classified; the series gets the class with the highest
mean slice probability. The node reports it as a finding of a TID 1500 Measurement Report with
its probability, and, when the rule asks (`explain: true`), a Parametric Map of the occlusion
sensitivity of that class on up to 8 slices spread through the series.

## Inputs and outputs

- Input `image`: FP32 `[batch, 1, {rows}, {cols}]`: a slice turned to the standard display
  orientation, Hounsfield units clipped to [{hu_low:g}, {hu_high:g}], scaled to [0, 1], the
  whole field of view resized to {rows}x{cols} (`node.pipelines.ct_region.preprocess`).
- Output `logits`: FP32 `[batch, 3]` (head, chest, abdomen).
- Network: MONAI `DenseNet` {kwargs} ({parameters} parameters), traced to TorchScript
  (`model.ts`, {weights_bytes} bytes, SHA-256 `{weights_sha256}`).
- Explanation: MONAI `OcclusionSensitivity`, a {mask}-pixel Gaussian mask (of {rows}) moved
  over each slice; the map is the relative drop of the class's probability.

## Training data and labels

| series | labels | training slices |
| --- | --- | --- |
{series_rows}

Labels come from headers and, for the chest CT, from its images: a slice is chest when its
reference lung mask (`training/lung_seg/labels.py`) covers at least {chest_cm2:g} cm², abdomen
when it lies below the lungs (less than {abdomen_cm2:g} cm² of lung in it and every slice under
it); the lung bases among the liver and the neck above the lung apices are left out. Slices
k % {every} == {offset} of each series are held out; training augments with flips, rotations
(±15°), scaling (±15 %), shifts (±10 %) and contrast (±10 %), classes sampled equally often.

Licences: see each series in `card.yaml` (`training_data`); the LIDC-IDRI images are TCIA's,
CC BY 3.0. Attribution: Clark K, et al. The Cancer Imaging Archive (TCIA). J Digit Imaging
2013;26(6):1045-1057; Armato SG III, et al. The LIDC and IDRI. Medical Physics 2011;38:915-931;
"The authors acknowledge the National Cancer Institute and the Foundation for the National
Institutes of Health, and their critical role in the creation of the free publicly available
LIDC/IDRI Database used in this study."

## Evaluation (through the node's pipeline)

| data | slices | accuracy |
| --- | --- | --- |
| held-out slices of the training series | {held} | {held_acc:.3f} ({held_ok}/{held}) |
| independent slices of other patients and scanners | {ind} | {ind_acc:.3f} ({ind_ok}/{ind}) |

Series decisions (class, mean probability; the first three series were trained on, all but
their held-out slices):

{decisions}

The held-out slices are neighbours of training slices of the same three patients, and the
independent set is five slices: these numbers say the pipeline works, not how the model would do
on other patients.

## Reproduce

`{command}` (seed {seed}, {iterations} iterations of batch {batch_size}, learning rate {lr:g};
training {train_s} s, total {total_s} s on {machine}; torch {torch}, MONAI {monai}, numpy
{numpy}, Python {python}). Every number above is in `metrics.json`.
"""


def render_card(metrics: dict[str, Any], card: ModelCard | None = None) -> str:
    """The Markdown model card, filled in from ``metrics``."""
    card = card or build_card(metrics)
    names = {0: "head", 1: "chest", 2: "abdomen", None: "chest / abdomen by the lung rule"}
    series_rows = "\n".join(
        f"| `{name}` | {names[label]} | {metrics['training_slices'][name]} |"
        for name, label in SERIES
    )
    decisions = "\n".join(
        f"- `{name}`: {d['class']} ({d['probability']})"
        for name, d in metrics["series_decisions"].items()
    )
    return _TEMPLATE.format(
        version=metrics["version"],
        rows=INPUT_SIZE[0],
        cols=INPUT_SIZE[1],
        hu_low=HU_WINDOW[0],
        hu_high=HU_WINDOW[1],
        kwargs=", ".join(f"{k}={v!r}" for k, v in NETWORK_KWARGS.items()),
        parameters=metrics["parameters"],
        weights_bytes=metrics["weights_bytes"],
        weights_sha256=metrics["weights_sha256"],
        mask=OCCLUSION_MASK_PX,
        series_rows=series_rows,
        chest_cm2=CHEST_MIN_LUNG_CM2,
        abdomen_cm2=ABDOMEN_MAX_LUNG_CM2,
        every=HELD_OUT_EVERY,
        offset=HELD_OUT_OFFSET,
        held=metrics["held_out_slices"],
        held_acc=metrics["held_out_accuracy"],
        held_ok=metrics["held_out_correct"],
        ind=metrics["independent_slices"],
        ind_acc=metrics["independent_accuracy"],
        ind_ok=metrics["independent_correct"],
        decisions=decisions,
        iterations=metrics["iterations"],
        **card_fields(metrics),
    )


def write_cards(version_dir: Path, metrics: dict[str, Any]) -> ModelCard:
    """Write ``card.yaml`` and ``MODEL_CARD.md`` into ``version_dir`` from ``metrics``.

    Returns
    -------
    ModelCard
        The card written (the node reads it back and checks its metrics against
        ``metrics.json``).
    """
    card = build_card(metrics)
    return common.write_cards(
        version_dir, card, render_card(metrics, card), written_by="training/ct_region/card.py"
    )


def main(argv: list[str] | None = None) -> int:
    """Re-render both cards from ``metrics.json`` (no retraining): ``MODEL_REPOSITORY``."""
    return common.rerender_cards(
        argv,
        module="training.ct_region.card",
        model_version_dir=lambda repository: repository / MODEL_NAME / MODEL_VERSION,
        write=write_cards,
    )


if __name__ == "__main__":
    raise SystemExit(main())
