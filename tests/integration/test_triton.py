"""The Triton backend against a real tritonserver serving the shipped model repository.

The server is the one ``make triton`` starts (``deploy/triton/start-local.sh``, the tritonserver of
the nvidia-pytriton wheel, installed by ``make triton-deps``), on free loopback ports in explicit
model-control mode. Without that environment these tests are skipped with the reason, except
under CI (``CI`` set), where they fail: ``make test`` installs it.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
import pytest

from node.assembly.volume import Volume
from node.backends import TorchBackend, TritonBackend
from node.errors import BackendError, ModelNotFound
from node.pipelines.lung_seg import BATCH_SIZE, INPUT_NAME, OUTPUT_NAME, LungSegmentation
from node.pipelines.lung_seg import preprocess as lung_preprocess
from tests.peers import (
    REPO_ROOT,
    RunningNode,
    free_port,
    start_node,
    start_storescp,
    stop_process,
    storescu,
    wait_for,
)
from tests.triton import Triton, require_triton, start_triton

pytestmark = [pytest.mark.integration]

MODEL_REPOSITORY = REPO_ROOT / "model_repository"
#: Largest difference allowed between the embedded and the Triton outputs (issue 8).
PARITY_ATOL = 1e-5


@pytest.fixture(scope="module")
def lidc_inputs(lidc: Volume) -> npt.NDArray[np.float32]:
    """Every slice of the LIDC chest CT, preprocessed as the lung pipeline does."""
    return lung_preprocess(lidc.array)


def _in_batches(
    backend: TorchBackend | TritonBackend, inputs: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    """The logits of every slice, sent in the lung pipeline's batches."""
    parts = [
        backend.infer("lung_seg", "1", {INPUT_NAME: inputs[i : i + BATCH_SIZE]})[OUTPUT_NAME]
        for i in range(0, inputs.shape[0], BATCH_SIZE)
    ]
    return np.concatenate(parts)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_triton_and_embedded_outputs_agree(
    triton: Triton, lidc_inputs: npt.NDArray[np.float32], protocol: str
) -> None:
    url = triton.grpc_url if protocol == "grpc" else triton.http_url
    remote = TritonBackend(url, protocol=protocol, timeout_s=120)  # type: ignore[arg-type]
    try:
        served = _in_batches(remote, lidc_inputs)
    finally:
        remote.close()
    embedded = _in_batches(TorchBackend(MODEL_REPOSITORY), lidc_inputs)
    assert served.shape == embedded.shape == (lidc_inputs.shape[0], 2, 256, 256)
    assert served.dtype == np.float32
    difference = float(np.abs(served - embedded).max())
    assert difference <= PARITY_ATOL, f"max abs difference {difference:g}"


def test_the_pipeline_gives_the_same_mask_on_either_backend(triton: Triton, lidc: Volume) -> None:
    pipeline = LungSegmentation()
    remote = TritonBackend(triton.grpc_url)
    try:
        served = pipeline.run(lidc, remote, "lung_seg", "1").label_maps[0].array
    finally:
        remote.close()
    embedded = pipeline.run(lidc, TorchBackend(MODEL_REPOSITORY), "lung_seg", "1")
    assert served.any()
    assert np.array_equal(served, embedded.label_maps[0].array)


def test_a_model_not_in_the_repository_is_not_found(triton: Triton) -> None:
    backend = TritonBackend(triton.grpc_url, timeout_s=30)
    inputs = {INPUT_NAME: np.zeros((1, 1, 256, 256), np.float32)}
    started = time.monotonic()
    with pytest.raises(ModelNotFound, match="no_such_model") as caught:
        backend.infer("no_such_model", "1", inputs)
    assert (caught.value.model, caught.value.version) == ("no_such_model", "1")
    with pytest.raises(ModelNotFound) as caught:
        backend.infer("lung_seg", "999", inputs)
    assert (caught.value.model, caught.value.version) == ("lung_seg", "999")
    assert time.monotonic() - started < 30
    backend.close()


def test_wrong_inputs_are_refused_before_sending(triton: Triton) -> None:
    backend = TritonBackend(triton.grpc_url)
    with pytest.raises(BackendError, match="not given"):
        backend.infer("lung_seg", "1", {"pixels": np.zeros((1, 1, 256, 256), np.float32)})
    with pytest.raises(BackendError, match="shape"):
        backend.infer("lung_seg", "1", {INPUT_NAME: np.zeros((1, 1, 128, 128), np.float32)})
    empty = backend.infer("lung_seg", "1", {INPUT_NAME: np.zeros((0, 1, 256, 256), np.float32)})
    assert empty[OUTPUT_NAME].shape == (0, 2, 256, 256)
    backend.close()


def test_a_model_unloaded_behind_the_backends_back_is_loaded_again(triton: Triton) -> None:
    backend = TritonBackend(triton.grpc_url)
    inputs = {INPUT_NAME: np.zeros((2, 1, 256, 256), np.float32)}
    first = backend.infer("lung_seg", "1", inputs)[OUTPUT_NAME]
    other = TritonBackend(triton.http_url, protocol="http")  # an administrator, say
    other.unload("lung_seg")
    wait_for(lambda: not other.is_ready("lung_seg", "1"), timeout_s=30, what="the unload")
    again = backend.infer("lung_seg", "1", inputs)[OUTPUT_NAME]
    assert np.array_equal(first, again)
    assert backend.is_ready("lung_seg", "1")
    backend.close()
    other.close()


def _job_history(node: RunningNode) -> str:
    shown = node.cli("jobs", "show", "1")
    return shown.stdout if shown.returncode == 0 else ""


@pytest.mark.slow
def test_the_node_waits_for_triton_then_sends_the_seg(tmp_path: Path, lidc_dir: Path) -> None:
    """A node configured for Triton receives a series while Triton is down: the job waits;
    once Triton is up the job runs there and the SEG reaches the destination."""
    require_triton()
    grpc_port = free_port()
    storescp, pacs_port = start_storescp(tmp_path / "pacs")
    node = start_node(
        tmp_path / "node",
        destinations={"pacs": {"host": "127.0.0.1", "port": pacs_port, "ae_title": "STORESCP"}},
        inference={"backend": "triton", "triton_url": f"127.0.0.1:{grpc_port}", "timeout_s": 60},
        export={
            "backoff_initial_s": 0.5,
            "backoff_max_s": 2.0,
            "timeout_s": 10,
            "max_attempts": 60,
        },
    )
    triton: Triton | None = None
    try:
        files = sorted(lidc_dir.glob("*.dcm"))
        assert storescu(node.dicom_port, files).returncode == 0
        wait_for(
            lambda: "inference backend unavailable" in _job_history(node),
            timeout_s=60,
            interval_s=0.5,
            what=f"the job to wait for Triton (node log: {node.log_path})",
        )
        triton = start_triton(MODEL_REPOSITORY, tmp_path / "triton", grpc_port=grpc_port)
        wait_for(
            lambda: re.search(r"state\s+done", _job_history(node)) is not None,
            timeout_s=180,
            interval_s=0.5,
            what=f"the job to be done (node log: {node.log_path})",
        )
        [seg_path] = list((tmp_path / "pacs").iterdir())
        seg = pydicom.dcmread(seg_path)
        assert seg.Modality == "SEG"
        algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("lung_seg", "1")
        assert "triton.model_loaded" in node.log_path.read_text()
    finally:
        stop_process(node.process)
        stop_process(storescp)
        if triton is not None:
            triton.stop()
