"""Versions added with ``pacs-ai-node models add`` served by a real tritonserver: a TorchScript
export of the shipped model gives the embedded numbers; ``models load`` / ``unload`` work on
Triton and are audited."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.networks.nets.unet import UNet
from typer.testing import CliRunner

from node.admin.cli import app
from node.assembly.volume import load_volume
from node.backends.embedded import EmbeddedBackend
from node.backends.triton import TritonBackend
from node.models.admin import ModelsAdmin
from node.models.audit import read_history
from node.models.card import card_template
from node.models.repository import ModelRepository
from node.pipelines.lung_seg import INPUT_NAME, OUTPUT_NAME, preprocess
from tests.integration.test_triton import PARITY_ATOL, _require_triton
from tests.peers import REPO_ROOT
from tests.triton import Triton, start_triton

pytestmark = pytest.mark.integration
SHIPPED = REPO_ROOT / "model_repository" / "lung_seg"


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> ModelRepository:
    """A copy of the shipped repository with version 2: the shipped model as TorchScript."""
    tmp = tmp_path_factory.mktemp("repo")
    root = tmp / "model_repository"
    shutil.copytree(
        SHIPPED,
        root / "lung_seg",
        ignore=shutil.ignore_patterns("__pycache__", "versions.yaml", "history.jsonl"),
    )
    description = json.loads((SHIPPED / "1" / "network.json").read_text())
    network = UNet(**description["kwargs"])
    network.load_state_dict(torch.load(SHIPPED / "1" / "model.pt", weights_only=True))
    network.eval()
    with torch.no_grad():
        torch.jit.trace(network, torch.zeros(1, 1, 256, 256)).save(str(tmp / "lung.ts"))
    card = tmp / "card.yaml"
    card.write_text(
        card_template("lung_seg", "2")
        .replace("<fill in", "TorchScript export of lung_seg 1")
        .replace("value: 0.0", "value: 0.99035")
    )
    repository = ModelRepository(root)
    assert (
        ModelsAdmin(repository, by="test").add(tmp / "lung.ts", model="lung_seg", card=card) == "2"
    )
    return repository


@pytest.fixture(scope="module")
def triton(
    repository: ModelRepository, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Triton]:
    _require_triton()
    server = start_triton(repository.root, tmp_path_factory.mktemp("triton"))
    yield server
    server.stop()


def test_a_torchscript_version_on_triton_gives_the_embedded_numbers(
    repository: ModelRepository, triton: Triton, lidc_dir: Path
) -> None:
    lidc = load_volume(sorted(lidc_dir.glob("*.dcm")))
    inputs = {INPUT_NAME: preprocess(lidc.array[16:32])}
    embedded = EmbeddedBackend(repository.root).infer("lung_seg", "1", inputs)[OUTPUT_NAME]
    backend = TritonBackend(triton.grpc_url, timeout_s=120)
    try:
        served = backend.infer("lung_seg", "2", inputs)[OUTPUT_NAME]
    finally:
        backend.close()
    assert served.shape == embedded.shape
    assert float(np.abs(served - embedded).max()) <= PARITY_ATOL


def test_models_load_and_unload_on_triton_are_audited(
    repository: ModelRepository, triton: Triton, tmp_path: Path
) -> None:
    config = tmp_path / "node.yaml"
    config.write_text(
        f"model_repository: {repository.root}\ndata_dir: {tmp_path / 'var'}\n"
        f"inference: {{backend: triton, triton_url: '{triton.grpc_url}'}}\n"
    )
    cli = CliRunner()
    for action in ("load", "unload"):
        result = cli.invoke(
            app, ["models", action, "lung_seg", "--config", str(config), "--by", "ops"]
        )
        assert result.exit_code == 0, result.output
        assert f"{action}ed lung_seg on Triton at {triton.grpc_url}" in result.output
    backend = TritonBackend(triton.grpc_url, timeout_s=60)
    try:
        assert not backend.is_ready("lung_seg", "2")
    finally:
        backend.close()
    trail = [(e.by, e.action) for e in read_history(repository.root, "lung_seg")]
    assert trail[-2:] == [("ops", "load"), ("ops", "unload")]
    missing = cli.invoke(app, ["models", "load", "liver", "--config", str(config)])
    assert missing.exit_code == 1
    assert "no model 'liver'" in missing.output
