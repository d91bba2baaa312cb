"""Export a ``lung_seg`` version as TorchScript, ONNX or a MONAI bundle: users' weight formats.

What a user brings to ``pacs-ai-node models add``, made from our own model so that every format
is tested end to end with known numbers::

    python -m training.lung_seg.export --format torchscript --out lung.ts
    python -m training.lung_seg.export --format onnx --out lung.onnx      # needs onnx
    python -m training.lung_seg.export --format bundle --out lung_bundle   # a MONAI bundle folder

``--from`` names the version folder to export (default ``model_repository/lung_seg/1``). The
bundle holds ``configs/metadata.json`` (with ``network_data_format``), ``configs/inference.json``
(``network_def``: MONAI's ``UNet`` with the same arguments), ``models/model.pt`` (the
``state_dict``) and the cards with their metrics in ``docs/``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from monai.networks.nets.unet import UNet

from node.pipelines.lung_seg import INPUT_NAME, INPUT_SIZE, OUTPUT_NAME

__all__ = ["export_bundle", "export_onnx", "export_torchscript", "load_network", "main"]

DEFAULT_SOURCE = Path("model_repository/lung_seg/1")


def load_network(version_dir: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The network of a state-dict version folder, in eval mode, and its ``network.json``."""
    description: dict[str, Any] = json.loads(
        (version_dir / "network.json").read_text(encoding="utf-8")
    )
    network = UNet(**description["kwargs"])
    network.load_state_dict(torch.load(version_dir / "model.pt", weights_only=True))
    network.eval()
    return network, description


def _example() -> torch.Tensor:
    return torch.zeros(1, 1, *INPUT_SIZE)


def export_torchscript(version_dir: Path, out: Path) -> Path:
    """Trace the network on one slice and save it with ``torch.jit.save``."""
    network, _ = load_network(version_dir)
    with torch.no_grad():
        traced = torch.jit.trace(network, _example())
    traced.save(str(out))
    return out


def export_onnx(version_dir: Path, out: Path) -> Path:
    """Export the network to ONNX (opset 17, a dynamic batch axis, the model's tensor names)."""
    network, _ = load_network(version_dir)
    torch.onnx.export(
        network,
        (_example(),),
        str(out),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        opset_version=17,
        dynamo=False,  # the TorchScript-based exporter: deterministic, no extra dependency
    )
    return out


def export_bundle(version_dir: Path, out: Path) -> Path:
    """Write a MONAI bundle folder of the version (state dict + configs + card)."""
    _network, description = load_network(version_dir)
    (out / "configs").mkdir(parents=True)
    (out / "models").mkdir()
    (out / "docs").mkdir()
    shutil.copy2(version_dir / "model.pt", out / "models" / "model.pt")
    for name in ("card.yaml", "metrics.json", "MODEL_CARD.md"):
        shutil.copy2(version_dir / name, out / "docs" / name)
    rows, cols = INPUT_SIZE
    metadata = {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/"
        "0.8.1/meta_schema_20220324.json",
        "version": "1.0.0",
        "monai_version": "1.6.1",
        "name": "lung_seg",
        "task": "Lung segmentation on axial chest CT, one slice at a time",
        "description": "Exported from the pacs-ai-node model repository; not for clinical use.",
        "network_data_format": {
            "inputs": {
                INPUT_NAME: {
                    "type": "image",
                    "format": "hounsfield",
                    "num_channels": 1,
                    "spatial_shape": [rows, cols],
                    "dtype": "float32",
                    "value_range": [0, 1],
                }
            },
            "outputs": {
                OUTPUT_NAME: {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": 2,
                    "spatial_shape": [rows, cols],
                    "dtype": "float32",
                    "channel_def": {"0": "background", "1": "lung"},
                }
            },
        },
    }
    inference = {
        "network_def": {"_target_": "monai.networks.nets.UNet", **description["kwargs"]},
        "network": "$@network_def.to('cpu')",
    }
    for name, content in (("metadata.json", metadata), ("inference.json", inference)):
        (out / "configs" / name).write_text(json.dumps(content, indent=2) + "\n", "utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    """Export one version; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--format", choices=["torchscript", "onnx", "bundle"], required=True)
    parser.add_argument("--out", type=Path, required=True, help="file (or bundle folder) to write")
    parser.add_argument("--from", dest="source", type=Path, default=DEFAULT_SOURCE)
    args = parser.parse_args(argv)
    exporters = {"torchscript": export_torchscript, "onnx": export_onnx, "bundle": export_bundle}
    written = exporters[args.format](args.source, args.out)
    print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
