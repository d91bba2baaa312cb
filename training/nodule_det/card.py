"""The ``nodule_det`` model cards: ``card.yaml`` (what the node checks) and ``MODEL_CARD.md``.

Both are written from one :class:`node.models.card.ModelCard` built here from ``metrics.json``;
every metric records its key there (the node checks them equal). No number is typed by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from node.models.card import InputContract, ModelCard
from node.pipelines.nodule_det import (
    AIR_HU,
    AIR_SHELL_MM,
    HU_WINDOW,
    INPUT_SIZE,
    MAX_DETECTIONS,
    MIN_AIR_FRACTION,
    MIN_VOLUME_MM3,
    NODULE,
    THRESHOLD,
)
from training import common
from training.common import card_fields
from training.nodule_det.data import HELD_OUT, LIDC, REAL_NODULE, REAL_NODULE_SLICES
from training.nodule_det.evaluate import LESIONS_PER_TRIAL, TRIALS
from training.nodule_det.lesions import (
    AXIS_RATIO,
    DIAMETER_MM,
    EDGE_MM,
    LOBULATION,
    MEAN_HU,
    TEXTURE_HU,
)
from training.nodule_det.repository import MODEL_NAME, MODEL_VERSION, NETWORK_KWARGS

__all__ = ["INPUT_CONTRACT", "build_card", "render_card", "write_cards"]

#: What the model is for. It was trained on one axial chest CT with slices 5 mm apart (1 mm
#: thick), 512x512 at 0.78 mm: its neighbour channels mean "5 mm away", so other slice spacings
#: are refused. The other limits are this project's choice, not a validated range.
INPUT_CONTRACT = InputContract.model_validate(
    {
        "modalities": ["CT"],
        "body_parts": ["CHEST", "LUNG", "THORAX"],
        "body_part_required": False,
        "orientation": "axial",
        "max_obliquity_deg": 30.0,
        "slices": {"min": 10, "max": 2000},
        "slice_thickness_mm": {"min": 0.5, "max": 5.0},
        "slice_spacing_mm": {"min": 4.5, "max": 5.5},
        "matrix": {"min": 256, "max": 1024},
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

_LIDC_SOURCE = (
    "TCIA LIDC-IDRI (patient LIDC-IDRI-0314), via GitHub FNNDSC/data; shared data folder " + LIDC
)
_HELD = f"held-out slices {HELD_OUT[0]}-{HELD_OUT[-1]} of the LIDC chest CT"


def build_card(metrics: dict[str, Any]) -> ModelCard:
    """The machine-readable card of the trained model, from ``metrics.json``'s content."""
    synthetic = f"{metrics['synthetic_nodules']} synthetic nodules in {_HELD}"
    items = [
        ("Sensitivity (synthetic nodules)", synthetic, "synthetic_sensitivity"),
        (
            "False positives per held-out slab (55 mm), synthetic trials",
            f"{metrics['synthetic_trials']} copies of {_HELD}",
            "synthetic_false_positives_per_slab",
        ),
        (
            "Median position error (mm), found synthetic nodules",
            synthetic,
            "synthetic_median_position_error_mm",
        ),
        (
            "Median absolute volume error (fraction), found synthetic nodules",
            synthetic,
            "synthetic_median_abs_volume_error",
        ),
        ("False positives, real scan", f"{_HELD}, unmodified", "real_scan_false_positives"),
    ]
    if "real_nodule_distance_mm" in metrics:
        items.append(
            (
                "Real nodule: distance of the detection from its written-down centre (mm)",
                f"the nodule on slices {REAL_NODULE_SLICES[0]}-{REAL_NODULE_SLICES[-1]}",
                "real_nodule_distance_mm",
            )
        )
    return ModelCard.model_validate(
        {
            "name": MODEL_NAME,
            "version": str(metrics["version"]),
            "task": "detection",
            "pipeline": "nodule_det",
            "summary": "Finds solid lung nodules on axial chest CT (5 mm slices) and segments "
            "each; a small demonstration model trained on synthetic nodules drawn into one "
            "patient's CT. Its risk score is uncalibrated.",
            "clinical_use": "not for clinical use",
            "intended_use": "Demonstrating nodule detection, TID 1500 measurement reports and "
            "explanation maps in the node, on adult axial chest CT with slices 5 mm apart; not "
            "validated on any population.",
            "not_intended_for": [
                "clinical decisions, screening or follow-up of any patient",
                "ground-glass, part-solid, calcified, juxtapleural or perifissural nodules "
                "(never drawn in training)",
                "nodules under 6 mm or over 20 mm (outside the training sizes)",
                "slice spacings other than about 5 mm, children, non-chest scans",
                "reading the risk score as a probability of cancer: it is uncalibrated",
            ],
            "input": INPUT_CONTRACT.model_dump(),
            "outputs": [
                {
                    "label": 1,
                    "name": "Nodule",
                    "category": {
                        "value": "49755003",
                        "scheme": "SCT",
                        "meaning": "Morphologically Abnormal Structure",
                    },
                    "property_type": {
                        "value": NODULE.value,
                        "scheme": NODULE.scheme,
                        "meaning": NODULE.meaning,
                    },
                    "rgb": [255, 140, 0],
                }
            ],
            "training_data": [
                {
                    "name": LIDC,
                    "source": _LIDC_SOURCE,
                    "licence": "CC BY 3.0 (TCIA); repository Apache-2.0",
                    "role": "training and held-out",
                    "description": "55 axial slices at 5 mm; "
                    f"{len(metrics['training_slice_indices'])} lung slices train, slices "
                    f"{HELD_OUT[0]}-{HELD_OUT[-1]} held out (with the real nodule), slices "
                    f"{metrics['guard_slice_indices'][0]} and {metrics['guard_slice_indices'][1]} "
                    "unused; synthetic solid nodules drawn in (training/nodule_det/lesions.py)",
                }
            ],
            "labels": {
                "expert_annotation": False,
                "provenance": "synthetic: the masks of the nodules drawn into the real CT "
                "(ellipsoids 6-20 mm, lobulated, -10 to 60 HU); the real nodule's position was "
                "written down by us from the images (training/nodule_det/data.py), not by an "
                "expert",
            },
            "metrics": [
                {"name": name, "dataset": dataset, "value": metrics[key], "source": key}
                for name, dataset, key in items
            ],
        }
    )


_TEMPLATE = """\
# Model card: `nodule_det` version {version}

**NOT FOR CLINICAL USE.** A small demonstration model trained on synthetic nodules drawn into
one patient's chest CT. It has not been validated on any population and must not inform
diagnosis, screening or treatment. **Its malignancy-risk score is uncalibrated**: a function of
size only, not a probability of cancer.

## Task

Finds solid lung nodules on axial chest CT with slices 5 mm apart and segments each one. For
every candidate the node reports its position (centroid, patient coordinates in mm), extent,
probability, long and short axis (mm), volume (mL), mean attenuation (HU) and an uncalibrated
risk score, as a DICOM-SEG (one segment per nodule) and a TID 1500 Measurement Report that
references each segment.

## Inputs and outputs

- Input `image`: FP32 `[batch, 3, {rows}, {cols}]`: a slice and its two neighbours, each in
  Hounsfield units clipped to [{hu_low:g}, {hu_high:g}], scaled to [0, 1] and resized to
  {rows}x{cols} (`node.pipelines.nodule_det.preprocess`).
- Output `logits`: FP32 `[batch, 1, {rows}, {cols}]`, the nodule logit of the middle slice.
- Postprocessing in the node (`node.pipelines.nodule_det.find_candidates`): logits resized to the
  slice, sigmoid, threshold {threshold:g}; 3D components of at least {min_mm3:g} mm³ whose
  {shell:g} mm in-plane shell is at least {air:.0%} aerated lung (below {air_hu:g} HU); at most
  {max_det} per series, most probable first. Probability = the highest pixel probability in the
  component. Risk score = logistic function of the mean of long and short axis, 0.5 at 8 mm
  (`node.pipelines.nodule_det.risk_score`).
- Network: MONAI `UNet` {kwargs} ({parameters} parameters, `model.pt` state_dict of
  {weights_bytes} bytes, SHA-256 `{weights_sha256}`).

## Intended use

{intended_use} The node refuses, before inference, any series outside: {modalities}, body part
{body_parts} (or none stated), axial, slices {spacing} apart, {thickness} thick, {slices}
slices, matrix {matrix}, field of view {fov}, 1st/99th HU percentiles within {percentiles}.

## Training data and labels

One series: `{lidc}` (TCIA LIDC-IDRI-0314, CC BY 3.0; see the shared data's
`LICENSES/TCIA_CC-BY-3.0_NOTICE.md`): 55 axial slices, 5 mm apart, 1 mm thick. No nodule labels
exist for it here, so the labels are **synthetic nodules drawn into the real images**
(`training/nodule_det/lesions.py`):

- shape: ellipsoid, longest diameter log-uniform in {diameter} mm, the other two axes
  {ratio} of it, random orientation, lobulated surface (radius modulation up to
  {lobulation:.0%});
- edge: partial volume falling linearly over {edge:g} mm;
- density: solid only, mean uniform in {mean_hu} HU, texture of {texture:g} HU standard deviation;
- placement: inside the lung, at least the nodule's reach plus 2 mm from the lung's edge.

Training used {patches} 64x64 patches (100 mm) of slices {train_slices}
({with_nodule} with nodule pixels), made at the scanner's resolution and reduced exactly as the
node reduces slices. Slices {held_first}-{held_last} (z = {held_z}) were held out, slices
{guards} not used at all.

Attribution (CC BY 3.0, required for the LIDC-IDRI images these weights are derived from):

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

## Evaluation (held-out slices only, through the node's pipeline)

| metric | value |
| --- | --- |
| sensitivity, {n_syn} synthetic nodules ({trials} x {per_trial}) | {sens:.3f} ({found}/{n_syn}) |
| false positives per held-out slab (55 mm), synthetic trials | {fp_syn} |
| median position error of found nodules | {pos_err} mm |
| median absolute volume error of found nodules | {vol_err:.1%} |
| false positives on the unmodified held-out slab | {fp_real} |
| real nodule found | {real_found} |
{real_rows}
**The real nodule** (the independent check): a lobulated solid nodule of about 15 mm in the
right lung beside the mediastinum, on slices {real_slices}, centre written down as
{real_center} mm (LPS). We found it by looking at lung-window renderings of every slice and
thresholding at -450 HU inside the lung; no expert annotation was available
(`training/nodule_det/data.py` says how). A round juxtamediastinal opacity on slice 37 that we
could not tell from a vessel is listed apart and never counted as found: detected =
{uncertain}.

These numbers come from synthetic nodules like the training ones, in one patient, and one real
nodule: they say the pipeline works, not how the model would do on other patients, scanners or
real nodules.

## Reproduce

`{command}` (seed {seed}, {iterations} iterations of batch {batch_size}, learning rate {lr:g};
training {train_s} s, total {total_s} s on {machine}; torch {torch}, MONAI {monai}, numpy
{numpy}, Python {python}). Every number above is in `metrics.json`.
"""


def render_card(metrics: dict[str, Any], card: ModelCard | None = None) -> str:
    """The Markdown model card, filled in from ``metrics`` and the card."""
    card = card or build_card(metrics)
    contract = card.input
    assert contract.slice_spacing_mm is not None
    assert contract.slice_thickness_mm is not None
    assert contract.matrix is not None
    assert contract.field_of_view_mm is not None
    assert contract.intensity is not None
    assert contract.intensity.percentiles is not None
    real_rows = ""
    if metrics.get("real_nodule_found"):
        real = metrics["real_nodule"]
        real_rows = (
            f"| real nodule: distance from its written-down centre | "
            f"{metrics['real_nodule_distance_mm']} mm |\n"
            f"| real nodule: long / short axis, volume, probability | "
            f"{real['Long axis']} / {real['Short axis']} mm, {real['Volume']} mL, "
            f"{real['probability']} |\n"
        )
    guards = metrics["guard_slice_indices"]
    train = metrics["training_slice_indices"]
    return _TEMPLATE.format(
        version=metrics["version"],
        rows=INPUT_SIZE[0],
        cols=INPUT_SIZE[1],
        hu_low=HU_WINDOW[0],
        hu_high=HU_WINDOW[1],
        threshold=THRESHOLD,
        min_mm3=MIN_VOLUME_MM3,
        shell=AIR_SHELL_MM,
        air=MIN_AIR_FRACTION,
        air_hu=AIR_HU,
        max_det=MAX_DETECTIONS,
        kwargs=", ".join(f"{k}={v!r}" for k, v in NETWORK_KWARGS.items()),
        parameters=metrics["parameters"],
        weights_bytes=metrics["weights_bytes"],
        weights_sha256=metrics["weights_sha256"],
        intended_use=card.intended_use,
        modalities="/".join(contract.modalities),
        body_parts="/".join(contract.body_parts),
        spacing=contract.slice_spacing_mm.describe("mm"),
        thickness=contract.slice_thickness_mm.describe("mm"),
        slices=contract.slices.describe(),
        matrix=contract.matrix.describe(),
        fov=contract.field_of_view_mm.describe("mm"),
        percentiles=contract.intensity.percentiles.describe("HU"),
        lidc=LIDC,
        diameter=f"{DIAMETER_MM[0]:g}-{DIAMETER_MM[1]:g}",
        ratio=f"{AXIS_RATIO[0]:g}-{AXIS_RATIO[1]:g}",
        lobulation=LOBULATION,
        edge=EDGE_MM,
        mean_hu=f"{MEAN_HU[0]:g} to {MEAN_HU[1]:g}",
        texture=TEXTURE_HU,
        patches=metrics["patches"],
        with_nodule=metrics["patches_with_nodule_pixels"],
        train_slices=f"{train[0]}-{train[-1]} with lung (except the held-out ones)",
        held_first=HELD_OUT[0],
        held_last=HELD_OUT[-1],
        held_z="-539.8 to -489.8 mm",
        guards=f"{guards[0]} and {guards[1]}",
        n_syn=metrics["synthetic_nodules"],
        trials=TRIALS,
        per_trial=LESIONS_PER_TRIAL,
        sens=metrics["synthetic_sensitivity"],
        found=metrics["synthetic_found"],
        fp_syn=metrics["synthetic_false_positives_per_slab"],
        pos_err=metrics["synthetic_median_position_error_mm"],
        vol_err=metrics["synthetic_median_abs_volume_error"],
        fp_real=metrics["real_scan_false_positives"],
        real_found="yes" if metrics["real_nodule_found"] else "no",
        real_rows=real_rows,
        real_slices=", ".join(str(k) for k in REAL_NODULE_SLICES),
        real_center=f"({REAL_NODULE[0]:g}, {REAL_NODULE[1]:g}, {REAL_NODULE[2]:g})",
        uncertain="yes" if metrics["uncertain_structure_detected"] else "no",
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
        version_dir, card, render_card(metrics, card), written_by="training/nodule_det/card.py"
    )


def main(argv: list[str] | None = None) -> int:
    """Re-render both cards from ``metrics.json`` (no retraining): ``MODEL_REPOSITORY``."""
    return common.rerender_cards(
        argv,
        module="training.nodule_det.card",
        model_version_dir=lambda repository: repository / MODEL_NAME / MODEL_VERSION,
        write=write_cards,
    )


if __name__ == "__main__":
    raise SystemExit(main())
