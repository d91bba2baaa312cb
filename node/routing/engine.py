"""Matching a series against the rules, with the reason each rule did or did not match."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from node.routing.rules import Match, Rule, RuleSet

__all__ = ["Decision", "Explanation", "SeriesFacts", "explain", "route"]


@dataclass(frozen=True, slots=True)
class SeriesFacts:
    """What routing looks at in a series."""

    modality: str
    body_part_examined: str
    series_description: str
    calling_ae_title: str
    sop_class_uid: str
    image_type: tuple[str, ...]
    slice_count: int

    @classmethod
    def from_attributes(
        cls, attributes: dict[str, Any], *, calling_ae_title: str, slice_count: int
    ) -> SeriesFacts:
        """Build from the routing attributes the index keeps for a series."""
        return cls(
            modality=str(attributes.get("Modality", "")),
            body_part_examined=str(attributes.get("BodyPartExamined", "")),
            series_description=str(attributes.get("SeriesDescription", "")),
            calling_ae_title=calling_ae_title,
            sop_class_uid=str(attributes.get("SOPClassUID", "")),
            image_type=tuple(str(v) for v in attributes.get("ImageType", [])),
            slice_count=slice_count,
        )


@dataclass(frozen=True, slots=True)
class Explanation:
    """Whether one rule matched, and why (or why not)."""

    rule: Rule
    matched: bool
    reason: str


@dataclass(frozen=True, slots=True)
class Decision:
    """The rules that apply to a series (empty: ignore it) and every rule's explanation."""

    rules: tuple[Rule, ...]
    explanations: tuple[Explanation, ...]
    used_fallback: bool


def _check(match: Match, facts: SeriesFacts) -> str | None:
    """None when every condition holds, else the first failing condition in words."""

    def one_of(name: str, allowed: list[str] | None, value: str) -> str | None:
        if allowed is None or value.strip().upper() in {a.strip().upper() for a in allowed}:
            return None
        return f"{name} {value!r} not in {allowed}"

    for failure in (
        one_of("Modality", match.modality, facts.modality),
        one_of("BodyPartExamined", match.body_part_examined, facts.body_part_examined),
        one_of("calling AE title", match.calling_ae_title, facts.calling_ae_title),
        one_of("SOPClassUID", match.sop_class_uid, facts.sop_class_uid),
    ):
        if failure:
            return failure
    if match.series_description is not None and not re.search(
        match.series_description, facts.series_description
    ):
        return f"SeriesDescription does not match /{match.series_description}/"
    if match.image_type is not None:
        present = {v.upper() for v in facts.image_type}
        missing = [v for v in match.image_type if v.upper() not in present]
        if missing:
            return f"ImageType lacks {missing}"
    if match.min_slices is not None and facts.slice_count < match.min_slices:
        return f"{facts.slice_count} slices, fewer than {match.min_slices}"
    if match.max_slices is not None and facts.slice_count > match.max_slices:
        return f"{facts.slice_count} slices, more than {match.max_slices}"
    return None


def _describe(match: Match) -> str:
    given = match.model_dump(exclude_none=True)
    return "all of " + ", ".join(f"{k}={v}" for k, v in given.items()) if given else "anything"


def explain(rules: RuleSet, facts: SeriesFacts) -> list[Explanation]:
    """Each rule in priority order, with whether it matches ``facts`` and why."""
    out = []
    for rule in rules.ordered():
        failure = _check(rule.match, facts)
        out.append(
            Explanation(
                rule=rule,
                matched=failure is None,
                reason=f"matches {_describe(rule.match)}" if failure is None else failure,
            )
        )
    return out


def route(rules: RuleSet, facts: SeriesFacts) -> Decision:
    """Decide which rules apply to a series."""
    explanations = explain(rules, facts)
    chosen: list[Rule] = []
    for item in explanations:
        if item.matched and (rules.fallback is None or item.rule.name != rules.fallback):
            chosen.append(item.rule)
            if not item.rule.continue_:
                break
    used_fallback = False
    if not chosen and rules.fallback is not None:
        chosen, used_fallback = [rules.rule(rules.fallback)], True
    return Decision(
        rules=tuple(chosen), explanations=tuple(explanations), used_fallback=used_fallback
    )
