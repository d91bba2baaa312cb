"""Rules that pin a version or follow the promoted one; promotion state; the audit trail file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError

from node.errors import ConfigError
from node.models.audit import append, read_history
from node.models.repository import ModelRepository, PromotionState
from node.routing.dispatch import resolve_versions
from node.routing.rules import Rule


def _rule(**changes: object) -> Rule:
    return Rule.model_validate(
        {"name": "r", "pipeline": "lung_seg", "model": "lung_seg", "destinations": ["p"]} | changes
    )


@pytest.fixture
def repository(tmp_path: Path, model_repository: Path) -> ModelRepository:
    root = tmp_path / "repo"
    shutil.copytree(
        model_repository / "lung_seg",
        root / "lung_seg",
        ignore=shutil.ignore_patterns("__pycache__", "versions.yaml", "history.jsonl"),
    )
    shutil.copytree(root / "lung_seg" / "1", root / "lung_seg" / "2")
    return ModelRepository(root)


def test_model_at_version_is_a_pin() -> None:
    rule = _rule(model="lung_seg@2")
    assert (rule.model, rule.version, rule.follows_promoted) == ("lung_seg", "2", False)
    assert _rule().follows_promoted
    assert _rule(version="promoted").follows_promoted
    with pytest.raises(ValidationError, match="disagree"):
        _rule(model="lung_seg@2", version="1")
    with pytest.raises(ValidationError, match="NAME@VERSION"):
        _rule(model="lung_seg@")


def test_without_versions_yaml_the_highest_version_is_promoted(
    repository: ModelRepository,
) -> None:
    assert repository.versions("lung_seg") == ["1", "2"]
    assert repository.state("lung_seg") == PromotionState(promoted="2")
    repository.save_state("lung_seg", PromotionState(promoted="1", shadow="2"))
    assert repository.resolve("lung_seg", None) == "1"
    assert repository.resolve("lung_seg", "promoted") == "1"
    assert repository.resolve("lung_seg", "2") == "2"
    with pytest.raises(ConfigError, match="version '3' is not in"):
        repository.resolve("lung_seg", "3")


def test_jobs_get_the_promoted_version_and_the_shadow(repository: ModelRepository) -> None:
    repository.save_state("lung_seg", PromotionState(promoted="1", shadow="2"))
    assert resolve_versions(_rule(), repository) == ("1", "2")
    assert resolve_versions(_rule(shadow="none"), repository) == ("1", None)
    assert resolve_versions(_rule(version="2"), repository) == ("2", None)  # not its own shadow
    assert resolve_versions(_rule(version="2", shadow="1"), repository) == ("2", "1")
    assert resolve_versions(_rule(model="lung_seg@1"), None) == ("1", None)


def test_a_bad_versions_file_is_a_clear_error(repository: ModelRepository) -> None:
    versions = repository.root / "lung_seg" / "versions.yaml"
    versions.write_text("promoted: 1\nprevious: [2]\n")
    assert repository.state("lung_seg") == PromotionState(promoted="1", previous=["2"])
    versions.write_text("promoted: 1\ncolour: red\n")
    with pytest.raises(ConfigError, match=r"versions.yaml: colour: Extra inputs"):
        repository.state("lung_seg")


def test_audit_entries_are_appended_and_a_torn_line_is_skipped(tmp_path: Path) -> None:
    append(tmp_path, "m", "promote", by="ana", version="2", detail="was 1")
    with (tmp_path / "m" / "history.jsonl").open("a") as trail:
        trail.write('{"at": "2026-')  # a crash in the middle of a write
    append(tmp_path, "m", "rollback", by="bo", version="1")
    entries = read_history(tmp_path, "m")
    assert [(e.by, e.action, e.version) for e in entries] == [
        ("ana", "promote", "2"),
        ("bo", "rollback", "1"),
    ]
    assert entries[0].at.endswith("+00:00")
