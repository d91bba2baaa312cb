"""Writes the ``ct_region`` entry of the model repository: config.pbtxt and network.json.

The weights are TorchScript (``model.ts``, traced from the MONAI ``DenseNet``): the node's
embedded backend and the shipped Triton ``model.py`` both run TorchScript versions, and neither
has to know the architecture.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from node.pipelines.ct_region import (
    BATCH_SIZE,
    CLASSES,
    HU_WINDOW,
    INPUT_NAME,
    INPUT_SIZE,
    OUTPUT_NAME,
)

__all__ = [
    "MODEL_NAME",
    "MODEL_VERSION",
    "NETWORK_KWARGS",
    "TORCHSCRIPT_FILE",
    "config_pbtxt",
    "copy_triton_model",
    "network_description",
    "write_json",
]

MODEL_NAME = "ct_region"
MODEL_VERSION = "1"
TORCHSCRIPT_FILE = "model.ts"
#: ``monai.networks.nets.DenseNet`` arguments, every one spelled out.
NETWORK_KWARGS: dict[str, Any] = {
    "spatial_dims": 2,
    "in_channels": 1,
    "out_channels": len(CLASSES),
    "init_features": 16,
    "growth_rate": 8,
    "block_config": [2, 2, 2],
    "bn_size": 2,
    "act": ["relu", {"inplace": True}],
    "norm": "batch",
    "dropout_prob": 0.0,
}
TRITON_MODEL = (
    Path(__file__).resolve().parents[2] / "model_repository" / "lung_seg" / "1" / "model.py"
)


def network_description() -> dict[str, Any]:
    """The content of ``network.json``: format, architecture, tensors, preprocessing."""
    return {
        "format": "torchscript",
        "architecture": "monai.networks.nets.DenseNet (traced)",
        "kwargs": NETWORK_KWARGS,
        "inputs": [{"name": INPUT_NAME, "data_type": "FP32", "dims": [1, *INPUT_SIZE]}],
        "outputs": [{"name": OUTPUT_NAME, "data_type": "FP32", "dims": [len(CLASSES)]}],
        "output_channels": [c.meaning for c in CLASSES],
        "preprocessing": {
            "orientation": "rows front to back, columns right to left (flipped when stored "
            "otherwise)",
            "hu_window": list(HU_WINDOW),
            "scale": "(clip(HU, hu_window) - hu_window[0]) / (hu_window[1] - hu_window[0])",
            "input_size": list(INPUT_SIZE),
            "implementation": "node.pipelines.ct_region.preprocess",
        },
        "postprocessing": "softmax per slice; the series: the class of highest mean probability",
    }


def config_pbtxt() -> str:
    """The Triton model configuration of ``ct_region`` (``name`` equals the folder's)."""
    rows, cols = INPUT_SIZE
    return f"""# ct_region: body region (head, chest, abdomen) of each CT slice, a small 2D DenseNet
# (see 1/MODEL_CARD.md). Served by Triton's Python backend (1/model.py runs the TorchScript
# 1/model.ts, as the node's embedded backend does). The node sends at most {BATCH_SIZE} slices.
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
    dims: [ {len(CLASSES)} ]
  }}
]
instance_group [
  {{
    count: 1
    kind: KIND_AUTO
  }}
]
dynamic_batching {{
  max_queue_delay_microseconds: 2000
}}
version_policy: {{ all: {{ }} }}
"""


def copy_triton_model(version_dir: Path) -> None:
    """Copy the shipped Triton Python-backend ``model.py`` into ``version_dir``."""
    shutil.copyfile(TRITON_MODEL, version_dir / "model.py")


def write_json(path: Path, content: dict[str, Any]) -> None:
    """Write ``content`` as indented JSON with a final newline (stable bytes for git)."""
    path.write_text(json.dumps(content, indent=2, sort_keys=False) + "\n", encoding="utf-8")
