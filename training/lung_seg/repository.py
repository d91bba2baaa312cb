"""Writes the ``lung_seg`` entry of the model repository: config.pbtxt, network.json, weights.

The layout is Triton's (``<model>/config.pbtxt``, ``<model>/<version>/``), so the node's embedded
backend and a Triton server read the same folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from node.pipelines.lung_seg import BATCH_SIZE, HU_WINDOW, INPUT_NAME, INPUT_SIZE, OUTPUT_NAME

__all__ = [
    "MODEL_NAME",
    "MODEL_VERSION",
    "NETWORK_KWARGS",
    "config_pbtxt",
    "network_description",
    "write_json",
]

MODEL_NAME = "lung_seg"
MODEL_VERSION = "1"
#: ``monai.networks.nets.UNet`` constructor arguments, every one spelled out so that a change of
#: MONAI's defaults cannot change the network.
NETWORK_KWARGS: dict[str, Any] = {
    "spatial_dims": 2,
    "in_channels": 1,
    "out_channels": 2,
    "channels": [16, 32, 64, 128, 256],
    "strides": [2, 2, 2, 2],
    "kernel_size": 3,
    "up_kernel_size": 3,
    "num_res_units": 1,
    "act": "PRELU",
    "norm": "INSTANCE",
    "dropout": 0.0,
    "bias": True,
    "adn_ordering": "NDA",
}


def network_description() -> dict[str, Any]:
    """The content of ``network.json``: architecture, tensors and preprocessing constants.

    Returns
    -------
    dict
        JSON-serialisable description read by :class:`node.backends.torch.TorchBackend`.
    """
    return {
        "architecture": "monai.networks.nets.UNet",
        "kwargs": NETWORK_KWARGS,
        "inputs": [{"name": INPUT_NAME, "data_type": "FP32", "dims": [1, *INPUT_SIZE]}],
        "outputs": [{"name": OUTPUT_NAME, "data_type": "FP32", "dims": [2, *INPUT_SIZE]}],
        "output_channels": ["background", "lung"],
        "preprocessing": {
            "hu_window": list(HU_WINDOW),
            "scale": "(clip(HU, hu_window) - hu_window[0]) / (hu_window[1] - hu_window[0])",
            "input_size": list(INPUT_SIZE),
            "resize": "per slice; Gaussian sigma (factor-1)/2 when shrinking, then linear "
            "interpolation, pixel-area aligned (scipy.ndimage.zoom grid_mode=True)",
            "implementation": "node.pipelines.lung_seg.preprocess",
        },
        "postprocessing": "node.pipelines.lung_seg.postprocess",
    }


def config_pbtxt() -> str:
    """The Triton model configuration of ``lung_seg``.

    Returns
    -------
    str
        ``config.pbtxt`` text; ``name`` equals the model folder's name.
    """
    rows, cols = INPUT_SIZE
    return f"""# lung_seg: 2D lung U-Net, one CT slice per batch item (see 1/MODEL_CARD.md).
# Served by Triton's Python backend (1/model.py loads 1/network.json and 1/model.pt, as the
# node's embedded backend does). The node sends at most {BATCH_SIZE} slices per request.
name: "{MODEL_NAME}"
backend: "python"
max_batch_size: {BATCH_SIZE}
input [
  {{
    name: "{INPUT_NAME}"
    data_type: TYPE_FP32
    dims: [ 1, {rows}, {cols} ]
  }}
]
output [
  {{
    name: "{OUTPUT_NAME}"
    data_type: TYPE_FP32
    dims: [ 2, {rows}, {cols} ]
  }}
]
# KIND_AUTO: one instance on each GPU Triton sees, or one CPU instance on a host without one.
# (KIND_GPU would fail to load on a CPU-only host.) model.py runs on cuda:<id> for a GPU
# instance and on the CPU otherwise.
instance_group [
  {{
    count: 1
    kind: KIND_AUTO
  }}
]
# Slices are independent, so requests from several jobs can share one pass.
dynamic_batching {{
  max_queue_delay_microseconds: 2000
}}
# Rules may pin any version in the repository, so every version folder is served.
version_policy: {{ all: {{ }} }}
"""


def write_json(path: Path, content: dict[str, Any]) -> None:
    """Write ``content`` as indented JSON with a final newline (stable bytes for git)."""
    path.write_text(json.dumps(content, indent=2, sort_keys=False) + "\n", encoding="utf-8")
