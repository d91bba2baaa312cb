"""The machine-readable model card: what a model version is for, validated by pydantic.

Each model version in the repository carries one, ``<model>/<version>/card.yaml``, beside the
human-readable ``MODEL_CARD.md`` (both written by the training script from the same values, so
they agree). The node reads it at start, ``config check`` reads it, ``models add`` refuses a
version without a valid one, and the intended-use guard (:mod:`node.models.guard`) checks every
series against its :class:`InputContract` before inference.

Example (abridged; the shipped ``model_repository/lung_seg/1/card.yaml`` is complete)::

    schema_version: 1
    name: lung_seg
    version: "1"
    task: segmentation
    pipeline: lung_seg
    summary: Segments both lungs on axial chest CT, one slice at a time.
    clinical_use: not for clinical use
    intended_use: Adult chest CT, axial slices ...
    not_intended_for: [children, non-chest scans, clinical decisions]
    input:
      modalities: [CT]
      body_parts: [CHEST, LUNG, THORAX]
      orientation: axial
      max_obliquity_deg: 30
      slices: {min: 10, max: 2000}
      slice_thickness_mm: {min: 0.5, max: 5.0}
      matrix: {min: 64, max: 2048}
      field_of_view_mm: {min: 280, max: 560}
      intensity:
        units: HU
        percentiles: {min: -3100, max: 4100}
        bands:
          - {name: air, high: -500, min_fraction: 0.05}
    outputs:
      - label: 1
        name: Lung
        category: {value: "123037004", scheme: SCT, meaning: Anatomical Structure}
        property_type: {value: "39607008", scheme: SCT, meaning: Lung}
        rgb: [128, 174, 128]
    training_data: [...]
    labels: {expert_annotation: false, provenance: ...}
    metrics:
      - {name: Dice, dataset: held-out LIDC slices (11), value: 0.99035, source: held_out_dice}

A metric's ``source`` names its key in ``metrics.json`` (written by the training run); when that
file lies beside the card, every value must equal it: no number on a card is typed by hand.

A card written from :func:`card_template` keeps ``<fill in ...>`` placeholders, which fail
validation until the user replaces them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from node.errors import ConfigError

__all__ = [
    "CARD_FILE",
    "METRICS_FILE",
    "PLACEHOLDER",
    "Coded",
    "InputContract",
    "Intensity",
    "IntensityBand",
    "Labels",
    "Metric",
    "ModelCard",
    "ModelCardError",
    "OutputSegment",
    "Range",
    "TrainingData",
    "card_template",
    "load_card",
    "parse_card",
]

#: The card's file name inside ``<model>/<version>/``.
CARD_FILE = "card.yaml"
#: The training run's numbers, beside the card; metrics on the card must equal them.
METRICS_FILE = "metrics.json"
#: How a template marks what the user must still write.
PLACEHOLDER = "<fill in"

#: Names a model or a version may have (also folder names in the repository and Triton's).
NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$"


class ModelCardError(ConfigError):
    """A model card is missing or invalid; ``path`` is its file, ``field`` the bad key."""

    def __init__(self, message: str, *, path: Path, field: str | None = None) -> None:
        where = f"{path}: {field}: " if field else f"{path}: "
        super().__init__(where + message, key="model_repository")
        self.path = path
        self.field = field


class _Strict(BaseModel):
    """Every card section: unknown keys are errors, strings may not be template placeholders."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="after")
    @classmethod
    def _no_placeholders(cls, value: Any) -> Any:
        texts = value if isinstance(value, list) else [value]
        if any(isinstance(t, str) and PLACEHOLDER in t for t in texts):
            raise ValueError("still the template's placeholder: write it")
        return value


class Range(_Strict):
    """A closed interval; either end may be left open (``null``)."""

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min:g} is greater than max {self.max:g}")
        return self

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies within the interval."""
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)

    def describe(self, unit: str = "") -> str:
        """The interval in words, e.g. ``"0.5 to 5 mm"`` or ``"at least 10"``."""
        suffix = f" {unit}" if unit else ""
        if self.min is not None and self.max is not None:
            return f"{self.min:g} to {self.max:g}{suffix}"
        if self.min is not None:
            return f"at least {self.min:g}{suffix}"
        assert self.max is not None
        return f"at most {self.max:g}{suffix}"


class IntensityBand(_Strict):
    """A band of values of which at least ``min_fraction`` of the voxels must fall inside.

    For a CT model, "at least 5 % of voxels at or below -500 HU" (air in the lungs and around
    the body) is what MR or PET values, all positive, never show.
    """

    name: str = Field(min_length=1, description="What the band is, e.g. 'air'.")
    low: float | None = Field(default=None, description="Lowest value in the band (none: -inf).")
    high: float | None = Field(default=None, description="Highest value in the band (none: +inf).")
    min_fraction: float = Field(gt=0, le=1, description="Least fraction of voxels in the band.")

    @model_validator(mode="after")
    def _bounded(self) -> IntensityBand:
        if self.low is None and self.high is None:
            raise ValueError("give low, high or both")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"low {self.low:g} is greater than high {self.high:g}")
        return self


class Intensity(_Strict):
    """What the voxel values of an accepted series look like (in modality units)."""

    units: str = Field(min_length=1, description="e.g. HU (CT after rescale).")
    percentiles: Range | None = Field(
        default=None, description="The 1st and 99th percentiles of the voxels must lie inside."
    )
    bands: list[IntensityBand] = Field(default_factory=list)


class InputContract(_Strict):
    """What series the model was made for; anything else is refused before inference."""

    modalities: list[str] = Field(min_length=1, description="DICOM Modality values, e.g. [CT].")
    body_parts: list[str] = Field(
        default_factory=list,
        description="BodyPartExamined values accepted (empty: any). A series that states another "
        "body part is refused; one that states none is accepted unless body_part_required.",
    )
    body_part_required: bool = False
    orientation: Literal["axial", "coronal", "sagittal", "any"] = "any"
    max_obliquity_deg: float = Field(
        default=30.0, ge=0, le=90, description="Largest angle of the slice normal to the axis."
    )
    slices: Range = Field(description="Number of slices in the series.")
    slice_thickness_mm: Range | None = None
    slice_spacing_mm: Range | None = Field(
        default=None, description="Median distance between slice centres."
    )
    pixel_spacing_mm: Range | None = None
    matrix: Range | None = Field(default=None, description="Rows and columns, each.")
    field_of_view_mm: Range | None = Field(default=None, description="Columns x column spacing.")
    intensity: Intensity | None = None

    @field_validator("modalities", "body_parts")
    @classmethod
    def _upper(cls, values: list[str]) -> list[str]:
        return [v.strip().upper() for v in values]


class Coded(_Strict):
    """A coded concept: code value, coding scheme designator, code meaning."""

    value: str = Field(min_length=1, max_length=64)
    scheme: str = Field(min_length=1, max_length=16)
    meaning: str = Field(min_length=1, max_length=64)


class OutputSegment(_Strict):
    """One label of the model's label map and its coded meaning.

    A detection model lists what it segments (e.g. label 1 = Nodule; the node numbers the
    objects it finds 1, 2, ...); a classification model lists its classes, ``label`` being the
    class index plus one.
    """

    label: int = Field(ge=1, le=255)
    name: str = Field(min_length=1, max_length=64)
    category: Coded
    property_type: Coded
    rgb: tuple[int, int, int] = (128, 174, 128)

    @field_validator("rgb")
    @classmethod
    def _byte(cls, rgb: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(not 0 <= c <= 255 for c in rgb):
            raise ValueError("each of r, g, b must be 0-255")
        return rgb


class TrainingData(_Strict):
    """One data set the model was trained or evaluated on, and where it comes from."""

    name: str = Field(min_length=1)
    source: str = Field(min_length=1, description="Where it was obtained.")
    licence: str = Field(min_length=1)
    role: Literal["training", "held-out", "training and held-out", "evaluation"]
    description: str = ""


class Labels(_Strict):
    """Where the training and evaluation labels come from."""

    expert_annotation: bool
    provenance: str = Field(min_length=1)


class Metric(_Strict):
    """One held-out (or training) metric, and where its number comes from."""

    name: str = Field(min_length=1, description="e.g. Dice.")
    dataset: str = Field(min_length=1, description="What it was measured on.")
    value: float
    source: str | None = Field(
        default=None, description="Key of the value in metrics.json beside the card."
    )


class ModelCard(_Strict):
    """The machine-readable card of one model version."""

    schema_version: Literal[1] = 1
    name: str = Field(pattern=NAME_PATTERN)
    version: str = Field(pattern=NAME_PATTERN)
    task: Literal["segmentation", "detection", "classification"] = Field(
        description="What the model does: segmentation (a label map), detection (objects with "
        "their segmentation and measurements) or classification (a label for the series)."
    )
    pipeline: str = Field(min_length=1, description="The node pipeline that runs it.")
    summary: str = Field(min_length=1)
    clinical_use: Literal["not for clinical use"] = Field(
        description="Must read 'not for clinical use': nothing this node runs is a medical device."
    )
    intended_use: str = Field(min_length=1)
    not_intended_for: list[str] = Field(default_factory=list)
    input: InputContract
    outputs: list[OutputSegment] = Field(min_length=1)
    training_data: list[TrainingData] = Field(min_length=1)
    labels: Labels
    metrics: list[Metric] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_labels(self) -> ModelCard:
        labels = [o.label for o in self.outputs]
        if len(set(labels)) != len(labels):
            raise ValueError(f"outputs repeat a label: {sorted(labels)}")
        return self

    def to_yaml(self) -> str:
        """The card as YAML, keys in schema order (what :func:`load_card` reads back)."""
        data = self.model_dump(mode="json", exclude_none=True)
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


def parse_card(data: Any, *, path: Path) -> ModelCard:
    """Validate card content read from ``path``.

    Raises
    ------
    ModelCardError
        Naming the file and the first bad field (e.g. ``input.slices.min``).
    """
    if not isinstance(data, dict):
        raise ModelCardError("a card is a YAML mapping", path=path)
    try:
        return ModelCard.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or None
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ModelCardError(message, path=path, field=field) from exc


def load_card(path: Path, *, model: str | None = None, version: str | None = None) -> ModelCard:
    """Read and validate a card file; check it names the folder it lies in.

    Parameters
    ----------
    path
        The ``card.yaml`` file.
    model, version
        When given, the card's ``name`` and ``version`` must equal them (its folders).

    Returns
    -------
    ModelCard

    Raises
    ------
    ModelCardError
        If the file is missing, not YAML, invalid, names another model or version, or a metric
        differs from ``metrics.json`` beside it.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelCardError("no model card (every model version needs one)", path=path) from None
    except OSError as exc:
        raise ModelCardError(f"cannot read ({exc.strerror})", path=path) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ModelCardError(f"not valid YAML ({exc})", path=path) from exc
    card = parse_card(data, path=path)
    if model is not None and card.name != model:
        raise ModelCardError(f"names model {card.name!r}, not {model!r}", path=path, field="name")
    if version is not None and card.version != version:
        raise ModelCardError(
            f"names version {card.version!r}, not {version!r}", path=path, field="version"
        )
    _check_metrics(card, path)
    return card


def _check_metrics(card: ModelCard, path: Path) -> None:
    """Metrics with a ``source`` must equal that key of ``metrics.json`` beside the card."""
    sourced = [(i, m) for i, m in enumerate(card.metrics) if m.source is not None]
    if not sourced:
        return
    metrics_path = path.parent / METRICS_FILE
    try:
        recorded = json.loads(metrics_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelCardError(
            f"metrics name sources in {METRICS_FILE}, which is missing or not JSON ({exc})",
            path=path,
            field="metrics",
        ) from exc
    for index, metric in sourced:
        assert metric.source is not None
        value = recorded.get(metric.source)
        if not isinstance(value, int | float) or float(value) != metric.value:
            raise ModelCardError(
                f"{metric.value:g} differs from {METRICS_FILE} {metric.source!r} ({value!r})",
                path=path,
                field=f"metrics.{index}.value",
            )


def card_template(name: str, version: str, *, pipeline: str = "lung_seg") -> str:
    """A card for the user to complete: every ``<fill in ...>`` must be replaced.

    The input contract starts as the shipped lung model's (axial chest CT); change what differs.

    Parameters
    ----------
    name, version
        The model and version the card is for.
    pipeline
        The node pipeline that will run it.

    Returns
    -------
    str
        YAML text with comments.
    """
    return f"""\
# Model card of {name} version {version}: what the node checks every series against before it
# runs this model. Replace every "<fill in ...>"; `pacs-ai-node models add` refuses the card until
# then. Schema: node/models/card.py (README, "Models").
schema_version: 1
name: {name}
version: "{version}"
task: segmentation
pipeline: {pipeline}
summary: "<fill in: what the model does, in one sentence>"
clinical_use: not for clinical use
intended_use: "<fill in: the patients and series it was made for>"
not_intended_for:
  - "<fill in: what it must not be used on>"
input:
  modalities: [CT]
  body_parts: [CHEST, LUNG, THORAX]   # BodyPartExamined values; empty list: any
  body_part_required: false           # true: a series without BodyPartExamined is refused
  orientation: axial                  # axial | coronal | sagittal | any
  max_obliquity_deg: 30
  slices: {{min: 10, max: 2000}}
  slice_thickness_mm: {{min: 0.5, max: 5.0}}
  matrix: {{min: 64, max: 2048}}        # rows and columns
  field_of_view_mm: {{min: 280, max: 560}}
  intensity:
    units: HU
    percentiles: {{min: -3100, max: 4100}}   # the 1st and 99th percentiles of the voxels
    bands:
      - {{name: air, high: -500, min_fraction: 0.05}}
      - {{name: soft tissue, low: -200, high: 200, min_fraction: 0.05}}
outputs:
  - label: 1
    name: Lung
    category: {{value: "123037004", scheme: SCT, meaning: Anatomical Structure}}
    property_type: {{value: "39607008", scheme: SCT, meaning: Lung}}
    rgb: [128, 174, 128]
training_data:
  - name: "<fill in: data set>"
    source: "<fill in: where it comes from>"
    licence: "<fill in>"
    role: training                    # training | held-out | training and held-out | evaluation
labels:
  expert_annotation: false
  provenance: "<fill in: who or what made the labels>"
metrics:
  - name: Dice
    dataset: "<fill in: the held-out set it was measured on>"
    value: 0.0                        # the measured value; never a guess
"""
