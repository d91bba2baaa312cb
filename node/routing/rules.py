"""Routing rules: a YAML file of rules, each naming a pipeline, a model version and destinations.

Example::

    rules:
      - name: lung-ct
        priority: 10
        match:
          modality: [CT]
          body_part_examined: [CHEST, LUNG]
          series_description: "(?i)lung|chest|thorax"
          image_type: [AXIAL]
          min_slices: 20
        pipeline: lung_seg
        model: lung_seg
        version: "1"             # optional: leave out (or "promoted") to follow the promoted one
        shadow: "2"              # optional: also run this version, compare, never export it
        explain_refusal: true    # optional: a series outside the model card gets an SR saying why
        explain: true            # optional: also send heat maps of why (Parametric Maps)
        destinations: [pacs]
        on_growth: ignore        # or reprocess: a series that grows after routing runs again
        expected_instances: 120  # optional: the series is complete at this count
        scope: series            # or study: the rule sees the whole study once it is complete
    fallback: null

``model`` may also be written ``NAME@VERSION``. A rule without ``version`` (or with
``version: promoted``) gets the version promoted with ``pacs-ai-node models promote``, resolved
when its job is created: every job records the concrete version it ran. Without ``shadow`` the
model's own shadow (``pacs-ai-node models shadow``) runs beside it, if it has one.

The highest-priority matching rule wins (ties: the earlier rule in the file). A rule with
``continue: true`` lets lower-priority rules match too, so one series can go to several models.
``fallback`` names a rule used only when no rule matched; without one such series are ignored.

A series that receives new instances after it was routed is reopened and completed again; each
rule's ``on_growth`` then decides: ``ignore`` (the default) keeps its first result, ``reprocess``
runs it again on the grown series. A job is never made twice for the same rule and the same
instances. A ``scope: study`` rule waits until every series of the study is complete and then
runs once for the study (a job anchored on the study's first matching series).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from node.errors import RoutingError

__all__ = ["Match", "Rule", "RuleSet", "load_rules"]


class Match(BaseModel):
    """Conditions on a series; all given conditions must hold. Lists mean "any of"."""

    model_config = ConfigDict(extra="forbid")

    modality: list[str] | None = Field(default=None, description="Modality, e.g. [CT].")
    body_part_examined: list[str] | None = Field(default=None, description="BodyPartExamined.")
    series_description: str | None = Field(
        default=None, description="Regular expression searched in SeriesDescription."
    )
    calling_ae_title: list[str] | None = Field(default=None, description="Who sent the series.")
    sop_class_uid: list[str] | None = Field(default=None, description="SOPClassUID of the images.")
    image_type: list[str] | None = Field(
        default=None, description="Values that must all appear in ImageType, e.g. [AXIAL]."
    )
    min_slices: int | None = Field(default=None, ge=1, description="At least this many instances.")
    max_slices: int | None = Field(default=None, ge=1, description="At most this many instances.")

    @field_validator("series_description")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from exc
        return value


class Rule(BaseModel):
    """One routing rule."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,128}$")
    priority: int = 0
    match: Match = Field(default_factory=Match)
    pipeline: str
    model: str = Field(description="Model name in the repository, or NAME@VERSION.")
    version: str | None = Field(
        default=None,
        description='A pinned version ("1"); none or "promoted": the promoted version.',
    )
    shadow: str | None = Field(
        default=None,
        description="A version run beside the chosen one on the same jobs; compared, never "
        'exported. "none" turns off the model\'s own shadow for this rule.',
    )
    explain_refusal: bool = Field(
        default=False,
        description="A series outside the model card gets a short SR saying why, sent to the "
        "destinations instead of a result.",
    )
    explain: bool = Field(
        default=False,
        description="Also send explanation heat maps (Parametric Maps: occlusion sensitivity) "
        "of the model's findings, for pipelines that make them; costs more inference.",
    )
    destinations: list[str] = Field(min_length=1)
    continue_: bool = Field(default=False, alias="continue")
    on_growth: Literal["ignore", "reprocess"] = Field(
        default="ignore",
        description="A series that grows after routing: keep the first result, or run again.",
    )
    expected_instances: int | None = Field(
        default=None,
        ge=1,
        description="The series is complete as soon as it holds this many instances.",
    )
    scope: Literal["series", "study"] = Field(
        default="series", description="series: each series alone; study: the complete study."
    )

    @model_validator(mode="after")
    def _split_model_at_version(self) -> Rule:
        if "@" in self.model:
            name, _, version = self.model.partition("@")
            if not name or not version:
                raise ValueError(f"model {self.model!r}: write NAME@VERSION")
            if self.version is not None and self.version != version:
                raise ValueError(f"model {self.model!r} and version {self.version!r} disagree")
            self.model, self.version = name, version
        return self

    @property
    def follows_promoted(self) -> bool:
        """Whether the rule gets whatever version is promoted (no pinned version)."""
        return self.version is None or self.version == "promoted"

    def versions_named(self) -> list[str | None]:
        """The versions the rule refers to: its own (None: promoted) and its shadow, if any."""
        named: list[str | None] = [self.version]
        if self.shadow is not None and self.shadow != "none":
            named.append(self.shadow)
        return named


class RuleSet(BaseModel):
    """The rules file."""

    model_config = ConfigDict(extra="forbid")

    rules: list[Rule] = Field(default_factory=list)
    fallback: str | None = Field(default=None, description="Name of the rule used when none match.")

    @model_validator(mode="after")
    def _consistent(self) -> RuleSet:
        names = [rule.name for rule in self.rules]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"rule names must be unique; repeated: {', '.join(duplicates)}")
        if self.fallback is not None and self.fallback not in names:
            raise ValueError(f"fallback names no rule: {self.fallback!r}")
        return self

    def ordered(self) -> list[Rule]:
        """Rules by descending priority, file order breaking ties."""
        return sorted(self.rules, key=lambda rule: -rule.priority)

    def rule(self, name: str) -> Rule:
        """The rule called ``name``."""
        for rule in self.rules:
            if rule.name == name:
                return rule
        raise KeyError(name)


def load_rules(path: Path) -> RuleSet:
    """Read and validate a rules file.

    Raises
    ------
    RoutingError
        If the file cannot be read or a rule is invalid; the message names the rule and key.
    """
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise RoutingError(f"cannot read rules file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise RoutingError(f"{path} is not valid YAML: {exc}") from exc
    try:
        return RuleSet.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise RoutingError(f"{path}: {where or 'rules'}: {first['msg']}") from exc
