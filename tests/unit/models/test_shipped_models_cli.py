"""``pacs-ai-node models list`` / ``show`` name every shipped model, the new ones included."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from node.admin.cli import app


@pytest.fixture
def config(tmp_path: Path, model_repository: Path) -> Path:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n"
        "  - {name: lungs, pipeline: lung_seg, model: lung_seg, destinations: [pacs]}\n"
        "  - {name: nodules, pipeline: nodule_det, model: nodule_det@1, explain: true,"
        " destinations: [pacs]}\n"
        "  - {name: region, pipeline: ct_region, model: ct_region, destinations: [pacs]}\n"
    )
    path = tmp_path / "node.yaml"
    path.write_text(
        f"model_repository: {model_repository}\nrules_file: {rules}\n"
        f"data_dir: {tmp_path / 'var'}\n"
        "destinations: {pacs: {host: 127.0.0.1, port: 104, ae_title: PACS}}\n"
    )
    return path


def test_models_list_names_every_shipped_model(config: Path) -> None:
    result = CliRunner().invoke(app, ["models", "list", "--config", str(config)])
    assert result.exit_code == 0, result.output
    names = [line.split()[0] for line in result.output.splitlines()[1:] if line.strip()]
    assert names == ["ct_region", "lung_seg", "nodule_det"]


@pytest.mark.parametrize(
    ("model", "task", "words"),
    [
        ("nodule_det", "detection", "uncalibrated"),
        ("ct_region", "classification", "Slice accuracy"),
    ],
)
def test_models_show_gives_the_card(config: Path, model: str, task: str, words: str) -> None:
    result = CliRunner().invoke(app, ["models", "show", f"{model}@1", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert f"task         {task} (pipeline {model})" in result.output
    assert "NOT FOR CLINICAL USE" in result.output
    assert words in result.output


def test_config_check_accepts_rules_naming_the_new_pipelines(config: Path) -> None:
    result = CliRunner().invoke(app, ["config", "check", "--config", str(config)])
    assert result.exit_code == 0, result.output
