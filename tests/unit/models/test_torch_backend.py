"""The embedded torch backend on the shipped model repository."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from node.assembly.volume import Volume
from node.backends.torch import TorchBackend
from node.errors import BackendError, BackendUnavailable, ModelNotFound
from node.pipelines.lung_seg import INPUT_NAME, OUTPUT_NAME, preprocess


@pytest.fixture(scope="module")
def slices(lidc: Volume) -> npt.NDArray[np.float32]:
    """Five preprocessed LIDC slices through both lungs, the trachea and the liver dome."""
    return preprocess(lidc.array[[1, 15, 25, 40, 52]])


def test_shipped_model_gives_declared_shape(
    backend: TorchBackend, slices: npt.NDArray[np.float32]
) -> None:
    outputs = backend.infer("lung_seg", "1", {INPUT_NAME: slices})
    assert set(outputs) == {OUTPUT_NAME}
    logits = outputs[OUTPUT_NAME]
    assert logits.shape == (5, 2, 256, 256)
    assert logits.dtype == np.float32
    assert np.isfinite(logits).all()
    lung_pixels = (logits[:, 1] > logits[:, 0]).sum(axis=(1, 2))
    assert lung_pixels[2] > 5000  # mid-chest slice: both lungs
    assert lung_pixels[0] < 50  # below the lungs


def test_outputs_are_deterministic_and_independent_of_chunking(
    model_repository: Path, backend: TorchBackend, slices: npt.NDArray[np.float32]
) -> None:
    first = backend.infer("lung_seg", "1", {INPUT_NAME: slices})[OUTPUT_NAME]
    second = backend.infer("lung_seg", "1", {INPUT_NAME: slices})[OUTPUT_NAME]
    assert np.array_equal(first, second)
    chunked = TorchBackend(model_repository, max_batch=2)
    third = chunked.infer("lung_seg", "1", {INPUT_NAME: slices})[OUTPUT_NAME]
    np.testing.assert_allclose(third, first, rtol=0, atol=1e-4)


def test_empty_batch(backend: TorchBackend) -> None:
    empty = np.zeros((0, 1, 256, 256), np.float32)
    assert backend.infer("lung_seg", "1", {INPUT_NAME: empty})[OUTPUT_NAME].shape == (
        0,
        2,
        256,
        256,
    )


@pytest.mark.parametrize(
    ("model", "version"), [("lung_seg", "999"), ("no_such_model", "1"), ("lung_seg", "..")]
)
def test_missing_model_or_version(backend: TorchBackend, model: str, version: str) -> None:
    with pytest.raises(ModelNotFound) as caught:
        backend.infer(model, version, {INPUT_NAME: np.zeros((1, 1, 256, 256), np.float32)})
    assert (caught.value.model, caught.value.version) == (model, version)


def test_wrong_input_name_or_shape(backend: TorchBackend) -> None:
    with pytest.raises(BackendError, match="not given"):
        backend.infer("lung_seg", "1", {"pixels": np.zeros((1, 1, 256, 256), np.float32)})
    with pytest.raises(BackendError, match="shape"):
        backend.infer("lung_seg", "1", {INPUT_NAME: np.zeros((1, 1, 128, 128), np.float32)})


def test_without_torch_the_node_imports_and_the_backend_says_unavailable(
    model_repository: Path,
) -> None:
    script = f"""
import sys
sys.modules["torch"] = None  # what an install without the 'torch' extra looks like
import node.backends, node.pipelines.lung_seg
from node.backends.torch import TorchBackend
from node.errors import BackendUnavailable
import numpy as np
try:
    TorchBackend({str(model_repository)!r}).infer(
        "lung_seg", "1", {{"image": np.zeros((1, 1, 256, 256), np.float32)}}
    )
except BackendUnavailable:
    print("unavailable")
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=False,
        cwd=model_repository.parent,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "unavailable"
    assert issubclass(BackendUnavailable, BackendError)
