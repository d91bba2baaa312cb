"""Routing rules: loading, matching with reasons, priorities, fallback, and `rules test`."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from node.admin.cli import app
from node.errors import RoutingError
from node.ingest.dimse import read_record
from node.routing.engine import SeriesFacts, route
from node.routing.rules import RuleSet, load_rules

REPO_ROOT = Path(__file__).resolve().parents[3]

RULES = """
rules:
  - name: chest-ct
    priority: 10
    match: {modality: [CT], body_part_examined: [CHEST], image_type: [AXIAL], min_slices: 20}
    pipeline: lung_seg
    model: lung_seg
    version: "1"
    destinations: [pacs]
  - name: any-ct-audit
    priority: 20
    continue: true
    match: {modality: [CT], calling_ae_title: [AUDITED]}
    pipeline: lung_seg
    model: lung_seg
    version: "1"
    destinations: [audit]
  - name: t2
    match: {modality: [MR], series_description: "(?i)t2"}
    pipeline: lung_seg
    model: lung_seg
    version: "1"
    destinations: [pacs]
  - name: catch-all
    pipeline: lung_seg
    model: lung_seg
    version: "1"
    destinations: [quarantine]
fallback: catch-all
"""


@pytest.fixture
def rules(tmp_path: Path) -> RuleSet:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    return load_rules(path)


def _facts(folder: Path, *, calling: str = "", count: int | None = None) -> SeriesFacts:
    files = [p for p in sorted(folder.iterdir()) if not p.name.endswith(".md")]
    record = read_record(files[0].read_bytes())
    return SeriesFacts.from_attributes(
        record.routing_attributes, calling_ae_title=calling, slice_count=count or len(files)
    )


def test_chest_ct_matches_its_rule(rules: RuleSet, lidc_dir: Path) -> None:
    decision = route(rules, _facts(lidc_dir))
    assert [r.name for r in decision.rules] == ["chest-ct"]
    assert not decision.used_fallback


def test_continue_lets_lower_priority_rules_match(rules: RuleSet, lidc_dir: Path) -> None:
    decision = route(rules, _facts(lidc_dir, calling="AUDITED"))
    assert [r.name for r in decision.rules] == ["any-ct-audit", "chest-ct"]


def test_reasons_name_the_failing_condition(rules: RuleSet, lidc_dir: Path) -> None:
    decision = route(rules, _facts(lidc_dir, count=5))
    reasons = {e.rule.name: e.reason for e in decision.explanations}
    assert reasons["chest-ct"] == "5 slices, fewer than 20"
    assert "calling AE title" in reasons["any-ct-audit"]
    assert decision.used_fallback
    assert [r.name for r in decision.rules] == ["catch-all"]


def test_series_description_regex_on_real_mr(rules: RuleSet, shared_data: Path) -> None:
    folder = shared_data / "fnndsc-data/BCH_brain_MR_Siemens_TrioTim/S006_AX_FSE_T2"
    assert [r.name for r in route(rules, _facts(folder)).rules] == ["t2"]


def test_head_ct_is_not_routed_by_the_shipped_rules(shared_data: Path) -> None:
    shipped = load_rules(REPO_ROOT / "deploy" / "rules.yaml")
    folder = shared_data / "dcm_qa_ct/GE_HiSpeedDual_head_CT_gantry_tilt_variable_spacing"
    decision = route(shipped, _facts(folder))
    assert decision.rules == ()
    assert "BodyPartExamined 'HEAD'" in decision.explanations[0].reason


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "rules: [{name: a, pipeline: p, model: m, version: '1', destinations: []}]",
            "destinations",
        ),
        (
            "rules: [{name: a, pipeline: p, model: m, version: '1', destinations: [x],"
            " match: {series_description: '('}}]",
            "regular expression",
        ),
        (
            "rules: [{name: a, pipeline: p, model: m, version: '1', destinations: [x],"
            " match: {modalty: [CT]}}]",
            "modalty",
        ),
        ("fallback: nope\nrules: []", "fallback names no rule"),
        (
            "rules: [{name: a, pipeline: p, model: m, version: '1', destinations: [x]},"
            " {name: a, pipeline: p, model: m, version: '1', destinations: [x]}]",
            "unique",
        ),
        ("rules: [", "not valid YAML"),
    ],
)
def test_invalid_rules_are_refused_with_the_reason(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    with pytest.raises(RoutingError, match=message):
        load_rules(path)


def test_rules_test_command_explains_each_series(tmp_path: Path, lidc_dir: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    result = CliRunner().invoke(app, ["rules", "test", str(lidc_dir), "--rules", str(path)])
    assert result.exit_code == 0, result.output
    assert "CT 55 instance(s) → chest-ct" in result.output
    assert "✓ chest-ct (priority 10): matches all of modality=['CT']" in result.output
    assert "✗ any-ct-audit" in result.output
    # The series is named by a hash, never by its UID.
    assert "1.3.6.1.4.1.14519" not in result.output


def test_rules_test_command_fails_clearly_on_a_folder_without_dicom(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    rules = REPO_ROOT / "deploy" / "rules.yaml"
    result = CliRunner().invoke(app, ["rules", "test", str(tmp_path), "--rules", str(rules)])
    assert result.exit_code == 1
    assert "no DICOM instances" in result.output
