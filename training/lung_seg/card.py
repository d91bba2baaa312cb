"""The ``lung_seg`` model card, rendered from the metrics the training script computed.

No number in the card is typed by hand: every one comes from ``metrics.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from node.pipelines.lung_seg import (
    FIELD_OF_VIEW_MM,
    HU_WINDOW,
    INPUT_SIZE,
    MAX_HOLE_AREA_MM2,
    MAX_TILT_DEG,
    SECOND_LUNG_FRACTION,
)
from training.lung_seg.data import EXTRA_TRAINING, HELD_OUT_EVERY, HELD_OUT_OFFSET, LIDC
from training.lung_seg.repository import MODEL_NAME, MODEL_VERSION, NETWORK_KWARGS

__all__ = ["render_card"]

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

Adult chest CT, axial slices (slice normal within {max_tilt:g} deg of the head-foot axis), square
pixels, field of view {fov_low:g}-{fov_high:g} mm. The node's `LungSegmentation.check` rejects
other modalities, non-axial or mixed orientations, non-square or varying pixel spacing, other
fields of view and giant series. Slice spacing, gaps, gantry tilt and Frame of Reference
inconsistencies do not matter to a per-slice model and are accepted.

Not intended for: children, non-chest scans (on a head CT it still predicted
{head_ml} mL of "lung"; the field-of-view guard rejects that series), contrast or pathology it has
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

To re-render this card from `metrics.json` after a template change (no retraining):
`python -m training.lung_seg.card model_repository`.
"""


def render_card(metrics: dict[str, Any]) -> str:
    """Fill the model card template with ``metrics`` (the content of ``metrics.json``).

    Parameters
    ----------
    metrics
        As written by :func:`training.lung_seg.train.main`.

    Returns
    -------
    str
        The card as Markdown.
    """
    held = metrics["held_out_slice_indices"]
    env = metrics["environment"]
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
        max_tilt=MAX_TILT_DEG,
        second=SECOND_LUNG_FRACTION,
        hole_mm2=MAX_HOLE_AREA_MM2,
        fov_low=FIELD_OF_VIEW_MM[0],
        fov_high=FIELD_OF_VIEW_MM[1],
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
        command=metrics["command"],
        seed=metrics["seed"],
        epochs=metrics["epochs"],
        batch_size=metrics["batch_size"],
        lr=metrics["learning_rate"],
        train_s=metrics["training_seconds"],
        total_s=metrics["total_seconds"],
        machine=env["machine"],
        torch=env["torch"],
        monai=env["monai"],
        numpy=env["numpy"],
        python=env["python"],
    )


def main(argv: list[str] | None = None) -> int:
    """Re-render ``MODEL_CARD.md`` from ``metrics.json`` in a model repository (no retraining).

    Parameters
    ----------
    argv
        One argument: the model repository folder.

    Returns
    -------
    int
        The exit status.
    """
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m training.lung_seg.card MODEL_REPOSITORY", file=sys.stderr)
        return 2
    version_dir = Path(args[0]) / MODEL_NAME / MODEL_VERSION
    metrics = json.loads((version_dir / "metrics.json").read_text(encoding="utf-8"))
    (version_dir / "MODEL_CARD.md").write_text(render_card(metrics), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
