"""Model cards: the shipped one agrees with the training run and the pipeline; bad cards are
clear errors naming the file and the field."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from node.admin.cli import app
from node.models.card import CARD_FILE, ModelCard, ModelCardError, card_template, load_card
from node.models.repository import ModelRepository
from node.pipelines.lung_seg import LUNG_SEGMENT
from training.lung_seg.card import build_card, render_card

REPO = Path(__file__).resolve().parents[3]


def _shipped(model_repository: Path) -> Path:
    return model_repository / "lung_seg" / "1"


def test_the_shipped_card_is_valid_and_names_its_folder(model_repository: Path) -> None:
    card = load_card(_shipped(model_repository) / CARD_FILE, model="lung_seg", version="1")
    assert (card.name, card.version, card.pipeline) == ("lung_seg", "1", "lung_seg")
    assert card.clinical_use == "not for clinical use"
    assert card.input.modalities == ["CT"]
    assert card.labels.expert_annotation is False
    assert card in ModelRepository(model_repository).validate()


@pytest.mark.parametrize(
    ("model", "task"), [("lung_seg", "segmentation"), ("nodule_det", "detection")]
)
def test_every_shipped_model_has_a_valid_card(
    model_repository: Path, model: str, task: str
) -> None:
    card = load_card(model_repository / model / "1" / CARD_FILE, model=model, version="1")
    assert (card.task, card.pipeline, card.clinical_use) == (task, model, "not for clinical use")
    assert card in ModelRepository(model_repository).validate()
    assert (model_repository / model / "1" / "MODEL_CARD.md").is_file()


def test_every_card_metric_is_the_training_runs_number(model_repository: Path) -> None:
    folder = _shipped(model_repository)
    card = load_card(folder / CARD_FILE)
    recorded = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    assert {m.source for m in card.metrics} >= {"held_out_dice", "whole_volume_dice"}
    for metric in card.metrics:
        assert metric.source is not None
        assert metric.value == recorded[metric.source]


def test_the_card_outputs_are_what_the_pipeline_writes(model_repository: Path) -> None:
    (output,) = load_card(_shipped(model_repository) / CARD_FILE).outputs
    assert (output.label, output.name, output.rgb) == (
        LUNG_SEGMENT.label,
        LUNG_SEGMENT.name,
        LUNG_SEGMENT.rgb,
    )
    assert (output.property_type.value, output.property_type.scheme) == ("39607008", "SCT")
    assert output.category.value == LUNG_SEGMENT.category.value


def test_both_cards_are_what_the_training_script_writes(model_repository: Path) -> None:
    # card.yaml and MODEL_CARD.md are rendered from metrics.json: re-rendering changes nothing.
    folder = _shipped(model_repository)
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    card = build_card(metrics)
    assert load_card(folder / CARD_FILE) == card
    assert (folder / "MODEL_CARD.md").read_text(encoding="utf-8") == render_card(metrics, card)


@pytest.fixture
def card_copy(tmp_path: Path, model_repository: Path) -> Path:
    """A copy of the shipped version folder's card and metrics, to break."""
    folder = tmp_path / "lung_seg" / "1"
    folder.mkdir(parents=True)
    for name in (CARD_FILE, "metrics.json"):
        shutil.copy(_shipped(model_repository) / name, folder / name)
    return folder / CARD_FILE


def _edit(path: Path, change: dict[str, object]) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    for dotted, value in change.items():
        *parents, last = dotted.split(".")
        target = data
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if value is None:
            del target[last]
        else:
            target[last] = value
    path.write_text(yaml.safe_dump(data), encoding="utf-8")


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"input.slices": {"min": 20, "max": 10}}, "input.slices", "min 20 is greater than max 10"),
        ({"clinical_use": "research"}, "clinical_use", "not for clinical use"),
        ({"input.modalities": []}, "input.modalities", "at least 1 item"),
        ({"input.colour": "blue"}, "input.colour", "Extra inputs are not permitted"),
        ({"outputs": []}, "outputs", "at least 1 item"),
        ({"training_data": None}, "training_data", "Field required"),
        ({"summary": "<fill in: what it does>"}, "summary", "placeholder"),
        ({"input.intensity.bands.0.min_fraction": 2}, "input.intensity.bands.0.min_fraction", "1"),
        ({"metrics.0.value": 0.999}, "metrics.0.value", "differs from metrics.json"),
        ({"name": "other_model"}, "name", "names model 'other_model', not 'lung_seg'"),
    ],
)
def test_a_bad_card_names_its_file_and_field(
    card_copy: Path, change: dict[str, object], field: str, message: str
) -> None:
    _edit(card_copy, change)
    with pytest.raises(ModelCardError) as caught:
        load_card(card_copy, model="lung_seg", version="1")
    assert caught.value.path == card_copy
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{card_copy}: {field}: ")
    assert message in str(caught.value)


def test_a_missing_or_unparsable_card_is_a_clear_error(card_copy: Path) -> None:
    card_copy.write_text("input: [unclosed\n", encoding="utf-8")
    with pytest.raises(ModelCardError, match="not valid YAML"):
        load_card(card_copy)
    card_copy.unlink()
    with pytest.raises(ModelCardError, match="no model card"):
        load_card(card_copy)


def test_the_template_is_refused_until_filled_in(tmp_path: Path) -> None:
    path = tmp_path / CARD_FILE
    path.write_text(card_template("my_lungs", "3"), encoding="utf-8")
    with pytest.raises(ModelCardError, match="summary: still the template's placeholder"):
        load_card(path)
    text = path.read_text(encoding="utf-8").replace("<fill in", "filled in by a test")
    path.write_text(text, encoding="utf-8")
    card = load_card(path, model="my_lungs", version="3")
    assert isinstance(card, ModelCard)
    assert card.input.field_of_view_mm is not None


def test_config_check_and_node_start_refuse_a_bad_card(
    tmp_path: Path, model_repository: Path
) -> None:
    repository = tmp_path / "repo"
    shutil.copytree(model_repository / "lung_seg", repository / "lung_seg")
    _edit(
        repository / "lung_seg" / "1" / CARD_FILE,
        {"input.slice_thickness_mm": {"min": 5, "max": 1}},
    )
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules: [{name: r, pipeline: lung_seg, model: lung_seg, destinations: [pacs]}]\n"
    )
    config = tmp_path / "node.yaml"
    config.write_text(
        f"rules_file: {rules}\nmodel_repository: {repository}\ndata_dir: {tmp_path / 'var'}\n"
        "destinations: {pacs: {host: h, port: 104, ae_title: P}}\n"
    )
    bad = CliRunner().invoke(app, ["config", "check", "--config", str(config)])
    assert bad.exit_code == 1
    card_path = repository / "lung_seg" / "1" / CARD_FILE
    assert f"{card_path}: input.slice_thickness_mm: min 5 is greater than max 1" in bad.output
    from node.config import load_settings
    from node.service import Node

    with pytest.raises(ModelCardError, match="slice_thickness_mm"):
        Node(load_settings(config))


def test_a_retrain_writes_the_shipped_triton_config_and_network(model_repository: Path) -> None:
    from training.lung_seg.repository import config_pbtxt, network_description

    folder = model_repository / "lung_seg"
    assert (folder / "config.pbtxt").read_text(encoding="utf-8") == config_pbtxt()
    shipped = json.loads((folder / "1" / "network.json").read_text(encoding="utf-8"))
    assert shipped == json.loads(json.dumps(network_description()))
