"""The ``lung_seg`` model cards: ``card.yaml`` (what the node checks) and ``MODEL_CARD.md``.

Both are written from one :class:`node.models.card.ModelCard` built here (:func:`build_card`):
the input contract below is the model's intended use, and every metric comes from
``metrics.json`` (the card records its key there, and the node checks them equal). No number on
either card is typed by hand.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from node.models.card import InputContract, ModelCard, OutputSegment
from node.pipelines.lung_seg import (
    HU_WINDOW,
    INPUT_SIZE,
    LUNG_SEGMENT,
    MAX_HOLE_AREA_MM2,
    SECOND_LUNG_FRACTION,
)
from training import common
from training.common import card_fields
from training.lung_seg.data import EXTRA_TRAINING, HELD_OUT_EVERY, HELD_OUT_OFFSET, LIDC
from training.lung_seg.repository import MODEL_NAME, MODEL_VERSION, NETWORK_KWARGS

__all__ = ["INPUT_CONTRACT", "build_card", "render_card", "write_cards"]

#: What the model is for: the node refuses every other series before inference
#: (:func:`node.models.guard.check_intended_use`). It was trained on axial chest CT of 1.0 and
#: 1.25 mm slices, 512x512 at 0.78-0.81 mm; the limits below are this project's choice around
#: that, not a validated range.
INPUT_CONTRACT = InputContract.model_validate(
    {
        "modalities": ["CT"],
        "body_parts": ["CHEST", "LUNG", "THORAX"],
        "body_part_required": False,
        "orientation": "axial",
        "max_obliquity_deg": 30.0,
        "slices": {"min": 10, "max": 2000},
        "slice_thickness_mm": {"min": 0.5, "max": 5.0},
        "matrix": {"min": 64, "max": 2048},
        "field_of_view_mm": {"min": 280.0, "max": 560.0},
        "intensity": {
            "units": "HU",
            "percentiles": {"min": -3100.0, "max": 4100.0},
            "bands": [
                {"name": "air", "high": -500.0, "min_fraction": 0.05},
                {"name": "soft tissue", "low": -200.0, "high": 200.0, "min_fraction": 0.05},
            ],
        },
    }
)

_TEMPLATE = """\
# Model card: `lung_seg` version {version}

**NOT FOR CLINICAL USE.** A small demonstration model trained on slices of one patient. It has not
been validated on any population and must not inform diagnosis or treatment.

## Task

Segments both lungs (one label, 1 = lung, SNOMED CT 39607008 "Lung") on axial chest CT, one slice
at a time. The node writes the result as a DICOM-SEG on the source series' grid.

## Inputs and outputs

- Input `image`: FP32 `[batch, 1, {rows}, {cols}]`. Each CT slice in Hounsfield units is clipped
  to [{hu_low:g}, {hu_high:g}] HU, scaled to [0, 1] and resized to {rows}x{cols} (Gaussian
  anti-aliasing, then linear interpolation; `node.pipelines.lung_seg.preprocess`).
- Output `logits`: FP32 `[batch, 2, {rows}, {cols}]`, channel 0 background, channel 1 lung.
- Postprocessing in the node (`node.pipelines.lung_seg.postprocess`): the lung-minus-background
  logit margin is resized back to the slice's rows and columns and thresholded at 0 (argmax);
  the largest 3D component is kept, with the second largest if at least {second:g} of its size;
  holes up to {hole_mm2:g} mm² are filled in each slice.
- Network: MONAI `UNet` {kwargs} ({parameters} parameters, `model.pt` state_dict of
  {weights_bytes} bytes, SHA-256 `{weights_sha256}`).

## Intended use

{intended_use}

Before inference the node checks every series against `card.yaml` beside this file (its
intended-use guard) and refuses, with the reason recorded on the job: Modality other than
{modalities}; a BodyPartExamined other than {body_parts} (a series that states none is
accepted); a number of slices outside {slices}; a slice normal more than {max_tilt:g} deg from
the head-foot axis; rows or columns outside {matrix}; a field of view outside {fov};
SliceThickness outside {thickness}; intensities that do not look like CT in HU ({bands}; the 1st
and 99th percentiles within {percentiles}). The pipeline itself (`LungSegmentation.check`) also
refuses mixed orientations and non-square or varying pixel spacing. Slice spacing, gaps, gantry
tilt and Frame of Reference inconsistencies do not matter to a per-slice model and are accepted.

Not intended for: children, non-chest scans (on a head CT it still predicted
{head_ml} mL of "lung"; the intended-use guard refuses that series), contrast or pathology it has
not seen (consolidation, effusion, large masses, emphysema), clinical decisions.

## Training data

- `{lidc}`: TCIA LIDC-IDRI patient LIDC-IDRI-0314, chest CT (Philips Brilliance 16P), 55 axial
  slices of 512x512 at 5 mm spacing (every 5th slice of a 1 mm series), liver dome to lung apices.
  Slice `k` (in z order) with `k % {every} == {offset}` is **held out** ({n_held} slices:
  {held_indices}); the other {n_train_lidc} slices train the model.
- {extra}: 3 contiguous lung-base slices of another patient (GE LightSpeed Ultra), all used for
  training, not for evaluation.
- Not used: the TotalSegmentator abdomen crop (its lung bases are tiny and the label algorithm
  takes bowel gas for lung there), the head CT (evaluated out of distribution only, above).

Licences: LIDC-IDRI images are from The Cancer Imaging Archive under CC BY 3.0 (via the FNNDSC/data
repository, Apache-2.0); the dcmqi slices are from QIICR/dcmqi, BSD-3-Clause.

Attribution (CC BY 3.0, required for the LIDC-IDRI images):

- TCIA: Clark K, Vendt B, Smith K, et al. The Cancer Imaging Archive (TCIA): Maintaining and
  Operating a Public Information Repository. J Digit Imaging 2013;26(6):1045-1057.
  doi:10.1007/s10278-013-9622-7
- LIDC-IDRI: Armato SG III, McLennan G, Bidaut L, et al. The Lung Image Database Consortium (LIDC)
  and Image Database Resource Initiative (IDRI): A completed reference database of lung nodules on
  CT scans. Medical Physics 2011;38:915-931.
- "The authors acknowledge the National Cancer Institute and the Foundation for the National
  Institutes of Health, and their critical role in the creation of the free publicly available
  LIDC/IDRI Database used in this study."
- Licence: https://creativecommons.org/licenses/by/3.0/legalcode. Before commercial or
  redistributed use, check TCIA's current "Citation & Data Usage Policy" for LIDC-IDRI.

## Labels

**No expert annotation.** Training and evaluation labels come from a classical algorithm
(`training/lung_seg/labels.py`, `reference_lung_mask`): air below -320 HU; 3D components touching
the image's in-plane edge removed (air outside the body); the largest component kept, with the
second if at least {second:g} of its size; small, dark, midline 2D components removed as trachea
and extrapulmonary bronchi; holes up to {hole_mm2:g} mm² filled per slice (vessels, nodules). The
model learns to imitate this algorithm, with its errors: intrapulmonary bronchi are lung, a
cross-section of the diaphragm dome surrounded by lung is lung, dense lung disease is not lung.

## Evaluation

Dice against the reference labels, at the original 512x512 resolution, after the node's full
inference path (`LungSegmentation.run` through `TorchBackend`, including upsampling and
postprocessing):

| set | Dice |
| --- | --- |
| held-out LIDC slices ({n_held}) | {held_out_dice:.4f} |
| held-out LIDC slices, before postprocessing | {held_out_raw:.4f} |
| training LIDC slices ({n_train_lidc}) | {train_dice:.4f} |
| whole LIDC volume (55 slices) | {whole_dice:.4f} |

Lung volume on LIDC: reference {ref_ml} mL, predicted {pred_ml} mL.

**This is optimistic about generalisation.** The held-out slices are the 5 mm neighbours of
training slices of the same patient on the same scanner, and the labels are those of a threshold
algorithm, which is easier to imitate than an expert. Nothing here measures performance on other
patients, scanners or diseases.

## Training

`{command}` (from the repository root; see `training/lung_seg/README.md`). Seed {seed}, {epochs}
epochs, batch {batch_size}, AdamW with a one-cycle schedule (max learning rate {lr:g}), Dice +
cross-entropy loss, augmentation by left-right flip, rotation, scale, shift and contrast. Training
took {train_s:.0f} s ({total_s:.0f} s in all, with labels and evaluation) on {machine}; torch
{torch}, MONAI {monai}, numpy {numpy}, Python {python}. Deterministic algorithms and a fixed seed:
re-running the command on the same machine and library versions reproduced these weights bit for
bit (same SHA-256) and these metrics.

## Serving

`config.pbtxt` declares the Triton Python backend; the node's embedded backend
(`node.backends.torch.TorchBackend`) reads `network.json` and `model.pt` from this folder.

To re-render this card and `card.yaml` from `metrics.json` after a template change (no
retraining): `python -m training.lung_seg.card model_repository`.
"""


def build_card(metrics: dict[str, Any]) -> ModelCard:
    """The machine-readable card of the trained model.

    Parameters
    ----------
    metrics
        The content of ``metrics.json``, as written by :func:`training.lung_seg.train.main`.

    Returns
    -------
    ModelCard
        Written as ``card.yaml``; its metrics carry their ``metrics.json`` keys.
    """
    held = len(metrics["held_out_slice_indices"])
    n_train = metrics["training_slices"][LIDC]
    fov = INPUT_CONTRACT.field_of_view_mm.describe("mm") if INPUT_CONTRACT.field_of_view_mm else ""
    lidc_source = (
        "TCIA LIDC-IDRI (patient LIDC-IDRI-0314), via GitHub FNNDSC/data; "
        "shared data folder " + LIDC
    )
    return ModelCard.model_validate(
        {
            "name": MODEL_NAME,
            "version": str(metrics["version"]),
            "task": "segmentation",
            "pipeline": "lung_seg",
            "summary": "Segments both lungs (label 1) on axial chest CT, one slice at a time; "
            "a small demonstration model trained on slices of one patient.",
            "clinical_use": "not for clinical use",
            "intended_use": "Adult chest CT, axial slices, square pixels, a field of view of "
            f"{fov}, for demonstrating the node; not validated on any population.",
            "not_intended_for": [
                "children",
                "non-chest scans",
                "contrast or pathology it has not seen (consolidation, effusion, large masses, "
                "emphysema)",
                "clinical decisions",
            ],
            "input": INPUT_CONTRACT.model_dump(),
            "outputs": [
                OutputSegment.model_validate(
                    {
                        "label": LUNG_SEGMENT.label,
                        "name": LUNG_SEGMENT.name,
                        "category": _coded(LUNG_SEGMENT.category),
                        "property_type": _coded(LUNG_SEGMENT.property_type),
                        "rgb": LUNG_SEGMENT.rgb,
                    }
                ).model_dump()
            ],
            "training_data": [
                {
                    "name": LIDC,
                    "source": lidc_source,
                    "licence": "CC BY 3.0 (TCIA); repository Apache-2.0",
                    "role": "training and held-out",
                    "description": f"55 axial slices at 5 mm; {n_train} train, slices k % "
                    f"{HELD_OUT_EVERY} == {HELD_OUT_OFFSET} ({held}) held out",
                },
                *(
                    {
                        "name": name,
                        "source": "GitHub QIICR/dcmqi",
                        "licence": "BSD-3-Clause",
                        "role": "training",
                        "description": "3 contiguous lung-base CT slices of another patient",
                    }
                    for name in EXTRA_TRAINING
                ),
            ],
            "labels": {
                "expert_annotation": False,
                "provenance": "a classical threshold algorithm (training/lung_seg/labels.py, "
                "reference_lung_mask); the model imitates it, errors included",
            },
            "metrics": [
                {
                    "name": "Dice",
                    "dataset": f"held-out LIDC slices ({held})",
                    "value": metrics["held_out_dice"],
                    "source": "held_out_dice",
                },
                {
                    "name": "Dice before postprocessing",
                    "dataset": f"held-out LIDC slices ({held})",
                    "value": metrics["held_out_dice_before_postprocessing"],
                    "source": "held_out_dice_before_postprocessing",
                },
                {
                    "name": "Dice",
                    "dataset": f"training LIDC slices ({n_train})",
                    "value": metrics["training_slices_dice"],
                    "source": "training_slices_dice",
                },
                {
                    "name": "Dice",
                    "dataset": "whole LIDC volume (55 slices)",
                    "value": metrics["whole_volume_dice"],
                    "source": "whole_volume_dice",
                },
            ],
        }
    )


def _coded(concept: Any) -> dict[str, str]:
    return {"value": concept.value, "scheme": concept.scheme, "meaning": concept.meaning}


def render_card(metrics: dict[str, Any], card: ModelCard | None = None) -> str:
    """Fill the Markdown model card with ``metrics`` and the machine-readable ``card``.

    Parameters
    ----------
    metrics
        As written by :func:`training.lung_seg.train.main`.
    card
        The card :func:`build_card` makes from ``metrics`` (built when not given).

    Returns
    -------
    str
        The card as Markdown.
    """
    card = card or build_card(metrics)
    contract = card.input
    assert contract.field_of_view_mm is not None
    assert contract.slice_thickness_mm is not None
    assert contract.matrix is not None
    assert contract.intensity is not None
    assert contract.intensity.percentiles is not None
    bands = "; ".join(
        f"{b.name}: at least {b.min_fraction:.0%} of voxels "
        + (f"at or below {b.high:g} HU" if b.low is None else f"within {b.low:g} to {b.high:g} HU")
        for b in contract.intensity.bands
    )
    held = metrics["held_out_slice_indices"]
    return _TEMPLATE.format(
        intended_use=card.intended_use,
        modalities="/".join(contract.modalities),
        body_parts="/".join(contract.body_parts),
        slices=contract.slices.describe(),
        matrix=contract.matrix.describe(),
        fov=contract.field_of_view_mm.describe("mm"),
        thickness=contract.slice_thickness_mm.describe("mm"),
        bands=bands,
        percentiles=contract.intensity.percentiles.describe("HU"),
        max_tilt=contract.max_obliquity_deg,
        version=metrics["version"],
        rows=INPUT_SIZE[0],
        cols=INPUT_SIZE[1],
        hu_low=HU_WINDOW[0],
        hu_high=HU_WINDOW[1],
        kwargs=", ".join(f"{k}={v!r}" for k, v in NETWORK_KWARGS.items()),
        parameters=metrics["parameters"],
        weights_bytes=metrics["weights_bytes"],
        weights_sha256=metrics["weights_sha256"],
        second=SECOND_LUNG_FRACTION,
        hole_mm2=MAX_HOLE_AREA_MM2,
        head_ml=metrics["head_ct_predicted_lung_ml"],
        lidc=LIDC,
        every=HELD_OUT_EVERY,
        offset=HELD_OUT_OFFSET,
        n_held=len(held),
        held_indices=", ".join(str(k) for k in held),
        n_train_lidc=metrics["training_slices"][LIDC],
        extra=", ".join(f"`{name}`" for name in EXTRA_TRAINING),
        held_out_dice=metrics["held_out_dice"],
        held_out_raw=metrics["held_out_dice_before_postprocessing"],
        train_dice=metrics["training_slices_dice"],
        whole_dice=metrics["whole_volume_dice"],
        ref_ml=metrics["reference_lung_ml"],
        pred_ml=metrics["predicted_lung_ml"],
        epochs=metrics["epochs"],
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
        version_dir, card, render_card(metrics, card), written_by="training/lung_seg/card.py"
    )


def main(argv: list[str] | None = None) -> int:
    """Re-render both cards from ``metrics.json`` (no retraining): ``MODEL_REPOSITORY``."""
    return common.rerender_cards(
        argv,
        module="training.lung_seg.card",
        model_version_dir=lambda repository: repository / MODEL_NAME / MODEL_VERSION,
        write=write_cards,
    )


if __name__ == "__main__":
    sys.exit(main())
