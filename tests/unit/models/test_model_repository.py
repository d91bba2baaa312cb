"""The shipped model repository: Triton layout, names, card and metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path

from node.pipelines.lung_seg import HU_WINDOW, INPUT_NAME, INPUT_SIZE, OUTPUT_NAME


def test_every_config_name_matches_its_folder(model_repository: Path) -> None:
    configs = sorted(model_repository.glob("*/config.pbtxt"))
    assert configs, "no model in the repository"
    for config in configs:
        match = re.search(r'^name:\s*"([^"]+)"', config.read_text(encoding="utf-8"), re.MULTILINE)
        assert match is not None, f"{config}: no name"
        assert match.group(1) == config.parent.name


def test_lung_seg_files_and_tensors(model_repository: Path) -> None:
    version = model_repository / "lung_seg" / "1"
    for name in ("model.pt", "network.json", "metrics.json", "MODEL_CARD.md"):
        assert (version / name).is_file(), name
    assert (version / "model.pt").stat().st_size < 8 * 1024 * 1024
    network = json.loads((version / "network.json").read_text(encoding="utf-8"))
    assert network["inputs"][0]["name"] == INPUT_NAME
    assert network["outputs"][0]["name"] == OUTPUT_NAME
    assert network["inputs"][0]["dims"] == [1, *INPUT_SIZE]
    assert network["outputs"][0]["dims"] == [2, *INPUT_SIZE]
    # The pipeline's preprocessing constants are the ones the weights were trained with.
    assert network["preprocessing"]["hu_window"] == list(HU_WINDOW)
    assert network["preprocessing"]["input_size"] == list(INPUT_SIZE)
    config = (model_repository / "lung_seg" / "config.pbtxt").read_text(encoding="utf-8")
    assert f'name: "{INPUT_NAME}"' in config
    assert f'name: "{OUTPUT_NAME}"' in config
    assert f"dims: [ 1, {INPUT_SIZE[0]}, {INPUT_SIZE[1]} ]" in config


def test_card_carries_the_computed_metrics_and_notices(model_repository: Path) -> None:
    version = model_repository / "lung_seg" / "1"
    metrics = json.loads((version / "metrics.json").read_text(encoding="utf-8"))
    card = (version / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert metrics["held_out_dice"] >= 0.95
    assert f"{metrics['held_out_dice']:.4f}" in card
    assert f"{metrics['whole_volume_dice']:.4f}" in card
    assert "NOT FOR CLINICAL USE" in card
    assert "CC BY 3.0" in card
    assert "doi:10.1007/s10278-013-9622-7" in card
    assert "Armato SG III" in card
    assert "No expert annotation" in card
    assert metrics["command"] in card
