"""Writes the ``nodule_det`` entry of the model repository: config.pbtxt and network.json.

The layout is Triton's (``<model>/config.pbtxt``, ``<model>/<version>/``); the version folder
also gets the Triton Python-backend ``model.py`` the shipped ``lung_seg`` uses (it builds the
MONAI ``UNet`` that ``network.json`` describes, as the node's embedded backend does).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from node.pipelines.nodule_det import (
    BATCH_SIZE,
    CONTEXT_SLICES,
    HU_WINDOW,
    INPUT_NAME,
    INPUT_SIZE,
    OUTPUT_NAME,
)

__all__ = [
    "MODEL_NAME",
    "MODEL_VERSION",
    "NETWORK_KWARGS",
    "config_pbtxt",
    "copy_triton_model",
    "network_description",
    "write_json",
]

MODEL_NAME = "nodule_det"
MODEL_VERSION = "1"
CHANNELS = 2 * CONTEXT_SLICES + 1
#: ``monai.networks.nets.UNet`` arguments, every one spelled out (MONAI's defaults may change).
#: Batch normalisation, not instance normalisation: the network trains on 64x64 patches and
#: runs on whole 256x256 slices, and instance statistics of a patch and a slice differ.
NETWORK_KWARGS: dict[str, Any] = {
    "spatial_dims": 2,
    "in_channels": CHANNELS,
    "out_channels": 1,
    "channels": [16, 32, 64, 128],
    "strides": [2, 2, 2],
    "kernel_size": 3,
    "up_kernel_size": 3,
    "num_res_units": 0,
    "act": "PRELU",
    "norm": "BATCH",
    "dropout": 0.0,
    "bias": True,
    "adn_ordering": "NDA",
}


def network_description() -> dict[str, Any]:
    """The content of ``network.json``: architecture, tensors and preprocessing constants."""
    return {
        "architecture": "monai.networks.nets.UNet",
        "kwargs": NETWORK_KWARGS,
        "inputs": [{"name": INPUT_NAME, "data_type": "FP32", "dims": [CHANNELS, *INPUT_SIZE]}],
        "outputs": [{"name": OUTPUT_NAME, "data_type": "FP32", "dims": [1, *INPUT_SIZE]}],
        "output_channels": ["nodule logit"],
        "preprocessing": {
            "hu_window": list(HU_WINDOW),
            "scale": "(clip(HU, hu_window) - hu_window[0]) / (hu_window[1] - hu_window[0])",
            "input_size": list(INPUT_SIZE),
            "context": f"channels: slices k-{CONTEXT_SLICES}..k+{CONTEXT_SLICES}, ends repeated",
            "implementation": "node.pipelines.nodule_det.preprocess",
        },
        "postprocessing": "node.pipelines.nodule_det.find_candidates",
    }


def config_pbtxt() -> str:
    """The Triton model configuration of ``nodule_det`` (``name`` equals the folder's)."""
    rows, cols = INPUT_SIZE
    return f"""# nodule_det: 2.5D nodule U-Net, one CT slice and its neighbours per batch item
# (see 1/MODEL_CARD.md). Served by Triton's Python backend (1/model.py loads 1/network.json and
# 1/model.pt, as the node's embedded backend does). The node sends at most {BATCH_SIZE} slices
# per request.
name: "{MODEL_NAME}"
backend: "python"
max_batch_size: {BATCH_SIZE}
input [
  {{
    name: "{INPUT_NAME}"
    data_type: TYPE_FP32
    dims: [ {CHANNELS}, {rows}, {cols} ]
  }}
]
output [
  {{
    name: "{OUTPUT_NAME}"
    data_type: TYPE_FP32
    dims: [ 1, {rows}, {cols} ]
  }}
]
# KIND_AUTO: one instance on each GPU Triton sees, or one CPU instance on a host without one.
instance_group [
  {{
    count: 1
    kind: KIND_AUTO
  }}
]
dynamic_batching {{
  max_queue_delay_microseconds: 2000
}}
# Rules may pin any version in the repository, so every version folder is served.
version_policy: {{ all: {{ }} }}
"""


#: The shipped Triton Python-backend model file (the same for every MONAI UNet version).
TRITON_MODEL = (
    Path(__file__).resolve().parents[2] / "model_repository" / "lung_seg" / "1" / "model.py"
)


def copy_triton_model(version_dir: Path) -> None:
    """Copy the Triton Python-backend ``model.py`` of ``lung_seg`` into ``version_dir``."""
    shutil.copyfile(TRITON_MODEL, version_dir / "model.py")


def write_json(path: Path, content: dict[str, Any]) -> None:
    """Write ``content`` as indented JSON with a final newline (stable bytes for git)."""
    path.write_text(json.dumps(content, indent=2, sort_keys=False) + "\n", encoding="utf-8")
