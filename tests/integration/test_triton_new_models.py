"""The nodule detector and the body-region classifier on a real tritonserver give the embedded
backend's numbers (the Triton Python-backend model.py runs the same state dict / TorchScript)."""

from __future__ import annotations

import numpy as np
import pytest

from node.assembly.volume import Volume
from node.backends import TritonBackend
from node.backends.embedded import EmbeddedBackend
from node.pipelines import ct_region, nodule_det
from tests.peers import REPO_ROOT
from tests.triton import Triton

pytestmark = [pytest.mark.integration]

MODEL_REPOSITORY = REPO_ROOT / "model_repository"


@pytest.mark.parametrize(
    ("model", "inputs"),
    [
        ("nodule_det", lambda v: nodule_det.preprocess(v.array[28:36])),
        ("ct_region", lambda v: ct_region.preprocess(ct_region.canonical(v)[0][20:40])),
    ],
)
def test_triton_gives_the_embedded_numbers(
    triton: Triton, lidc: Volume, model: str, inputs: object
) -> None:
    batch = inputs(lidc)  # type: ignore[operator]
    backend = TritonBackend(triton.grpc_url, protocol="grpc", timeout_s=120)
    backend.load(model)
    served = backend.infer(model, "1", {"image": batch})["logits"]
    embedded = EmbeddedBackend(MODEL_REPOSITORY).infer(model, "1", {"image": batch})["logits"]
    assert served.shape == embedded.shape
    assert np.max(np.abs(served - embedded)) < 1e-4
