"""``pacs-ai-node models`` on a copy of the shipped repository: add (a version folder, a
TorchScript export of the shipped model), promote, rollback, shadow, remove, history."""

from __future__ import annotations

import getpass
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner, Result

from node.admin.cli import app
from node.assembly.volume import Volume, load_volume
from node.backends.embedded import EmbeddedBackend
from node.models.repository import ModelRepository
from node.pipelines.lung_seg import INPUT_NAME, OUTPUT_NAME, LungSegmentation, preprocess
from tests.peers import REPO_ROOT
from training.lung_seg.export import export_torchscript

pytestmark = pytest.mark.integration
SHIPPED = REPO_ROOT / "model_repository" / "lung_seg"


@pytest.fixture
def node_dir(tmp_path: Path) -> Path:
    """A node configuration over a copy of the shipped repository (Triton's files and cards)."""
    repository = tmp_path / "model_repository"
    shutil.copytree(
        SHIPPED,
        repository / "lung_seg",
        ignore=shutil.ignore_patterns("__pycache__", "versions.yaml", "history.jsonl"),
    )
    _rules(tmp_path, "")
    (tmp_path / "node.yaml").write_text(
        f"model_repository: {repository}\nrules_file: {tmp_path / 'rules.yaml'}\n"
        f"data_dir: {tmp_path / 'var'}\n"
        "destinations: {pacs: {host: 127.0.0.1, port: 104, ae_title: PACS}}\n"
    )
    return tmp_path


def _rules(node_dir: Path, extra: str) -> None:
    (node_dir / "rules.yaml").write_text(
        "rules:\n  - {name: lungs, pipeline: lung_seg, model: lung_seg, destinations: [pacs]}\n"
        + extra
    )


def _cli(node_dir: Path, *args: str) -> Result:
    return CliRunner().invoke(app, ["models", *args, "--config", str(node_dir / "node.yaml")])


def _ok(node_dir: Path, *args: str) -> str:
    result = _cli(node_dir, *args)
    assert result.exit_code == 0, result.output
    return result.output


def _refused(node_dir: Path, *args: str) -> str:
    result = _cli(node_dir, *args)
    assert result.exit_code == 1, result.output
    return result.output


def _version_folder(tmp_path: Path) -> Path:
    """What the training script writes for a version (here: version 1's files, re-imported)."""
    folder = tmp_path / "retrained"
    folder.mkdir()
    for name in ("network.json", "model.pt", "card.yaml", "metrics.json", "MODEL_CARD.md"):
        shutil.copy(SHIPPED / "1" / name, folder / name)
    return folder


def test_list_show_and_a_version_lifecycle_with_its_audit_trail(
    node_dir: Path, tmp_path: Path
) -> None:
    listed = _ok(node_dir, "list")
    assert "lung_seg" in listed
    assert "1 " in listed.splitlines()[1]
    shown = _ok(node_dir, "show", "lung_seg")
    assert shown.startswith("lung_seg@1 (promoted)")
    assert "NOT FOR CLINICAL USE" in shown
    assert "metric       Dice 0.9903 on held-out LIDC slices (11)" in shown
    assert "modality     CT, axial" in shown

    added = _ok(
        node_dir, "add", str(_version_folder(tmp_path)), "--model", "lung_seg", "--by", "ana"
    )
    assert "added lung_seg@2" in added
    card = (node_dir / "model_repository/lung_seg/2/card.yaml").read_text()
    assert "version: '2'" in card
    assert (node_dir / "model_repository/lung_seg/2/model.py").is_file()  # for Triton
    assert _ok(node_dir, "show", "lung_seg").startswith("lung_seg@1 (promoted)")

    assert "promoted lung_seg@2 (was 1)" in _ok(node_dir, "promote", "lung_seg@2", "--by", "ana")
    assert "already promoted" in _refused(node_dir, "promote", "lung_seg@2")
    assert "is promoted" in _refused(node_dir, "remove", "lung_seg@2")
    assert "rolled lung_seg back to lung_seg@1" in _ok(node_dir, "rollback", "lung_seg")
    assert "no earlier promoted version" in _refused(node_dir, "rollback", "lung_seg")

    _rules(
        node_dir,
        "  - {name: pinned, pipeline: lung_seg, model: lung_seg@2, destinations: [pacs]}\n",
    )
    assert "pinned by rule(s) pinned" in _refused(node_dir, "remove", "lung_seg@2")
    _rules(node_dir, "")
    assert "removed lung_seg@2" in _ok(node_dir, "remove", "lung_seg@2")
    assert not (node_dir / "model_repository/lung_seg/2").exists()
    assert "is promoted" in _refused(node_dir, "remove", "lung_seg@1")
    assert "no version '7'" in _refused(node_dir, "promote", "lung_seg@7")

    history = _ok(node_dir, "history", "lung_seg").splitlines()
    actions = [line.split()[1:4] for line in history]
    assert actions == [
        ["ana", "add", "lung_seg@2"],
        ["ana", "promote", "lung_seg@2"],
        [getpass.getuser(), "rollback", "lung_seg@1"],
        [getpass.getuser(), "remove", "lung_seg@2"],
    ]
    assert history[0].endswith("(version folder retrained)")
    assert history[1].endswith("(was 1)")
    trail = (node_dir / "model_repository/lung_seg/history.jsonl").read_text().splitlines()
    assert {"at", "by", "action", "model", "version", "detail"} == set(json.loads(trail[0]))


def test_shadow_on_and_off(node_dir: Path, tmp_path: Path) -> None:
    _ok(node_dir, "add", str(_version_folder(tmp_path)), "--model", "lung_seg")
    assert "shadow lung_seg@2" in _ok(node_dir, "shadow", "lung_seg@2")
    assert "2" in _ok(node_dir, "list").splitlines()[1].split()[-1]
    assert "(shadow)" in _ok(node_dir, "show", "lung_seg@2")
    assert "is the shadow" in _refused(node_dir, "remove", "lung_seg@2")
    assert "is the promoted version" in _refused(node_dir, "shadow", "lung_seg@1")
    assert "shadow off" in _ok(node_dir, "shadow", "lung_seg", "--off")
    assert [line.split()[2] for line in _ok(node_dir, "history", "lung_seg").splitlines()] == [
        "add",
        "shadow",
        "shadow",
    ]


def _filled_template(node_dir: Path, path: Path) -> Path:
    _ok(node_dir, "card-template", "lung_seg", "--out", str(path))
    assert "placeholder" in _refused(
        node_dir, "add", str(path), "--model", "lung_seg", "--card", str(path)
    )
    text = path.read_text().replace("<fill in", "Exported by a test from lung_seg 1")
    path.write_text(text.replace("value: 0.0", "value: 0.99035"))
    return path


def test_a_torchscript_export_of_the_shipped_model_gives_the_same_numbers(
    node_dir: Path, tmp_path: Path, load_series: Callable[[str], Volume]
) -> None:
    scripted = export_torchscript(SHIPPED / "1", tmp_path / "lung.ts")
    missing = _refused(node_dir, "add", str(scripted), "--model", "lung_seg")
    assert "models card-template lung_seg" in missing
    card = _filled_template(node_dir, tmp_path / "card.yaml")
    assert "added lung_seg@2" in _ok(
        node_dir, "add", str(scripted), "--model", "lung_seg", "--card", str(card)
    )
    version_dir = node_dir / "model_repository/lung_seg/2"
    assert json.loads((version_dir / "network.json").read_text())["format"] == "torchscript"
    ModelRepository(node_dir / "model_repository").validate()

    backend = EmbeddedBackend(node_dir / "model_repository")
    lidc = load_series("fnndsc-data/LIDC-IDRI-0314_CT_chest_every5th_slice")
    inputs = {INPUT_NAME: preprocess(lidc.array[20:36])}
    shipped = backend.infer("lung_seg", "1", inputs)[OUTPUT_NAME]
    exported = backend.infer("lung_seg", "2", inputs)[OUTPUT_NAME]
    assert float(np.abs(shipped - exported).max()) <= 1e-5
    pipeline = LungSegmentation()
    one = pipeline.run(lidc, backend, "lung_seg", "1").label_maps[0].array
    two = pipeline.run(lidc, backend, "lung_seg", "2").label_maps[0].array
    assert np.array_equal(one, two)


def test_broken_weights_and_unknown_models_are_refused(node_dir: Path, tmp_path: Path) -> None:
    card = _filled_template(node_dir, tmp_path / "card.yaml")
    junk = tmp_path / "junk.ts"
    junk.write_bytes(b"not a TorchScript archive")
    refused = _refused(node_dir, "add", str(junk), "--model", "lung_seg", "--card", str(card))
    assert "does not run" in refused
    assert ModelRepository(node_dir / "model_repository").versions("lung_seg") == ["1"]
    assert not list((node_dir / "model_repository/lung_seg").glob(".staging-*"))
    assert "no model 'liver'" in _refused(
        node_dir, "add", str(junk), "--model", "liver", "--card", str(card)
    )
    assert "not triton" in _refused(node_dir, "load", "lung_seg")


def test_write_card_template(node_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "mine.yaml"
    written = _ok(
        node_dir, "add", str(tmp_path), "--model", "lung_seg", "--write-card-template", str(out)
    )
    assert "fill it in" in written
    assert 'version: "2"' in out.read_text()
    assert "exists" in _refused(node_dir, "card-template", "lung_seg", "--out", str(out))


def test_help_lists_every_command() -> None:
    result = CliRunner().invoke(app, ["models", "--help"])
    assert result.exit_code == 0
    for command in ("list", "show", "add", "promote", "rollback", "shadow", "remove", "history",
                    "load", "unload", "card-template"):  # fmt: skip
        assert command in result.output


@pytest.fixture(scope="module")
def load_series(shared_data: Path) -> Callable[[str], Volume]:
    def load(relative: str) -> Volume:
        folder = shared_data / relative
        return load_volume(sorted(p for p in folder.iterdir() if p.suffix != ".md"))

    return load
