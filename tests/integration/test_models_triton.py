"""Users' own weights through both backends: the shipped model exported by our own script
(``training/lung_seg/export.py``) as TorchScript, as a MONAI bundle and as ONNX, imported with
``pacs-ai-node models add``, run embedded and on a real tritonserver; ``models load`` /
``unload`` on Triton, audited."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from typer.testing import CliRunner

from node.admin.cli import app
from node.assembly.volume import Volume
from node.backends.embedded import EmbeddedBackend
from node.backends.triton import TritonBackend
from node.models.admin import ModelAdminError, ModelsAdmin
from node.models.audit import read_history
from node.models.card import card_template
from node.models.repository import ModelRepository
from node.pipelines.lung_seg import INPUT_NAME, OUTPUT_NAME, LungSegmentation, preprocess
from tests.integration.test_triton import PARITY_ATOL
from tests.peers import REPO_ROOT
from tests.triton import TRITON_HOME, Triton, require_triton, start_triton
from training.lung_seg.export import export_bundle, export_onnx, export_torchscript

pytestmark = pytest.mark.integration
SHIPPED = REPO_ROOT / "model_repository" / "lung_seg"
HAS_ONNX = all(importlib.util.find_spec(m) for m in ("onnxruntime", "onnx"))
NO_ONNX = "onnxruntime and onnx are not installed (the 'onnx' extra and dev group)"
#: ONNX Runtime and torch differ in the last bits of float32 (convolution order): the exported
#: model is compared with the shipped one at this tolerance, and by its masks.
ONNX_VS_TORCH_ATOL = 1e-4


def _card(path: Path, what: str) -> Path:
    text = card_template("lung_seg", "0").replace("<fill in", what)
    path.write_text(text.replace("value: 0.0", "value: 0.99035"))
    return path


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> ModelRepository:
    """A copy of the shipped repository with the shipped model added again in every format:
    2 = TorchScript, 3 = MONAI bundle (state dict + network_def), 4 = ONNX (when onnxruntime is
    installed here and in Triton's environment)."""
    tmp = tmp_path_factory.mktemp("repo")
    root = tmp / "model_repository"
    shutil.copytree(
        SHIPPED,
        root / "lung_seg",
        ignore=shutil.ignore_patterns("__pycache__", "versions.yaml", "history.jsonl"),
    )
    repository = ModelRepository(root)
    admin = ModelsAdmin(repository, by="test")
    scripted = export_torchscript(SHIPPED / "1", tmp / "lung.ts")
    card = _card(tmp / "card.yaml", "an export of lung_seg 1")
    assert admin.add(scripted, model="lung_seg", card=card) == "2"
    assert admin.add(export_bundle(SHIPPED / "1", tmp / "bundle"), model="lung_seg") == "3"
    if HAS_ONNX and triton_has_onnxruntime():
        # Triton loads every version of a model at once: a version it cannot load (ONNX without
        # onnxruntime in its environment) would fail the whole model.
        onnx = export_onnx(SHIPPED / "1", tmp / "lung.onnx")
        assert admin.add(onnx, model="lung_seg", card=card) == "4"
    return repository


def triton_has_onnxruntime() -> bool:
    """Whether Triton's Python environment (``make triton-deps``) can import onnxruntime."""
    python = TRITON_HOME / "venv" / "bin" / "python"
    if not python.is_file():
        return False
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = subprocess.run([str(python), "-c", "import onnxruntime"], env=env, check=False)
    return probe.returncode == 0


@pytest.fixture(scope="module")
def onnx_repository(tmp_path_factory: pytest.TempPathFactory) -> ModelRepository:
    """A copy of the shipped repository with version 2: the shipped model exported to ONNX."""
    if not HAS_ONNX:
        pytest.skip(NO_ONNX)
    tmp = tmp_path_factory.mktemp("onnx_repo")
    shutil.copytree(
        SHIPPED,
        tmp / "model_repository" / "lung_seg",
        ignore=shutil.ignore_patterns("__pycache__", "versions.yaml", "history.jsonl"),
    )
    repository = ModelRepository(tmp / "model_repository")
    onnx = export_onnx(SHIPPED / "1", tmp / "lung.onnx")
    card = _card(tmp / "card.yaml", "an ONNX export of lung_seg 1")
    assert ModelsAdmin(repository, by="test").add(onnx, model="lung_seg", card=card) == "2"
    return repository


@pytest.fixture(scope="module")
def slab(lidc: Volume) -> dict[str, npt.NDArray[np.float32]]:
    return {INPUT_NAME: preprocess(lidc.array[16:32])}


def test_imported_versions_are_what_they_say(repository: ModelRepository) -> None:
    formats = {v: _format(repository, v) for v in repository.versions("lung_seg")}
    assert formats["2"] == "torchscript"
    assert formats["3"] == "monai-state-dict"
    assert (repository.version_dir("lung_seg", "3") / "bundle/configs/metadata.json").is_file()
    if "4" in formats:
        assert formats["4"] == "onnx"
    assert [e.detail for e in read_history(repository.root, "lung_seg")][:2] == [
        "TorchScript file lung.ts",
        "MONAI bundle bundle",
    ]
    assert repository.state("lung_seg").promoted == "1"  # adding never promotes


def _format(repository: ModelRepository, version: str) -> str:
    description = json.loads(
        (repository.version_dir("lung_seg", version) / "network.json").read_text()
    )
    return str(description.get("format", "monai-state-dict"))


@pytest.mark.parametrize("version", ["2", "3"])
def test_torchscript_and_bundle_give_the_shipped_numbers_embedded(
    repository: ModelRepository, slab: dict[str, npt.NDArray[np.float32]], version: str
) -> None:
    backend = EmbeddedBackend(repository.root)
    shipped = backend.infer("lung_seg", "1", slab)[OUTPUT_NAME]
    imported = backend.infer("lung_seg", version, slab)[OUTPUT_NAME]
    assert float(np.abs(shipped - imported).max()) <= PARITY_ATOL


def test_onnx_gives_the_shipped_masks_embedded(
    onnx_repository: ModelRepository, lidc: Volume, slab: dict[str, npt.NDArray[np.float32]]
) -> None:
    assert _format(onnx_repository, "2") == "onnx"
    backend = EmbeddedBackend(onnx_repository.root)
    shipped = backend.infer("lung_seg", "1", slab)[OUTPUT_NAME]
    onnx = backend.infer("lung_seg", "2", slab)[OUTPUT_NAME]
    assert float(np.abs(shipped - onnx).max()) <= ONNX_VS_TORCH_ATOL
    pipeline = LungSegmentation()
    one = pipeline.run(lidc, backend, "lung_seg", "1").label_maps[0].array
    four = pipeline.run(lidc, backend, "lung_seg", "2").label_maps[0].array
    differing = int((one != four).sum())
    assert differing <= one.size * 1e-6, differing  # at most a few border pixels


@pytest.fixture(scope="module")
def triton(
    repository: ModelRepository, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Triton]:
    require_triton()
    server = start_triton(repository.root, tmp_path_factory.mktemp("triton"))
    yield server
    server.stop()


@pytest.mark.parametrize("version", ["2", "3", "4"])
def test_every_format_on_triton_gives_the_embedded_numbers(
    repository: ModelRepository,
    triton: Triton,
    slab: dict[str, npt.NDArray[np.float32]],
    version: str,
) -> None:
    if version == "4" and not repository.has("lung_seg", "4"):
        pytest.skip(
            NO_ONNX
            if not HAS_ONNX
            else "Triton's Python environment has no onnxruntime (deploy/triton/requirements.txt)"
        )
    embedded = EmbeddedBackend(repository.root).infer("lung_seg", version, slab)[OUTPUT_NAME]
    backend = TritonBackend(triton.grpc_url, timeout_s=120)
    try:
        served = backend.infer("lung_seg", version, slab)[OUTPUT_NAME]
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


def test_a_bundle_of_another_shape_or_architecture_is_refused(
    repository: ModelRepository, tmp_path: Path
) -> None:
    admin = ModelsAdmin(repository, by="test")
    bundle = export_bundle(SHIPPED / "1", tmp_path / "wrong_shape")
    metadata = bundle / "configs" / "metadata.json"
    content = json.loads(metadata.read_text())
    content["network_data_format"]["inputs"]["image"]["spatial_shape"] = [128, 128]
    metadata.write_text(json.dumps(content))
    with pytest.raises(ModelAdminError, match=r"input is \[1, 128, 128\]"):
        admin.add(bundle, model="lung_seg")
    other = export_bundle(SHIPPED / "1", tmp_path / "other_net")
    inference = other / "configs" / "inference.json"
    definition = json.loads(inference.read_text())
    definition["network_def"]["_target_"] = "SegResNet"
    inference.write_text(json.dumps(definition))
    with pytest.raises(ModelAdminError, match="not one the node builds"):
        admin.add(other, model="lung_seg")
    assert repository.versions("lung_seg")[-1] in ("3", "4")  # nothing half-imported
    assert not list((repository.root / "lung_seg").glob(".staging-*"))
