"""What every training script records and writes the same way: the environment, the weights'
identity, the two cards, and the command that re-renders the cards from ``metrics.json``."""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import monai
import numpy as np
import scipy
import torch

from node.models.card import CARD_FILE, ModelCard

__all__ = ["card_fields", "environment", "rerender_cards", "weights_record", "write_cards"]


def environment(threads: int) -> dict[str, str]:
    """The library versions and machine a model was trained with, for ``metrics.json``."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "machine": f"{platform.machine()}, {threads} threads (CPU)",
    }


def weights_record(weights: bytes, network: torch.nn.Module) -> dict[str, Any]:
    """The size, SHA-256 and parameter count of the weights written, for ``metrics.json``."""
    return {
        "weights_bytes": len(weights),
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "parameters": sum(p.numel() for p in network.parameters()),
    }


def card_fields(metrics: dict[str, Any]) -> dict[str, Any]:
    """The fields of a ``MODEL_CARD.md`` template that say how the model was trained."""
    env = metrics["environment"]
    return {
        "command": metrics["command"],
        "seed": metrics["seed"],
        "batch_size": metrics["batch_size"],
        "lr": metrics["learning_rate"],
        "train_s": metrics["training_seconds"],
        "total_s": metrics["total_seconds"],
        "machine": env["machine"],
        "torch": env["torch"],
        "monai": env["monai"],
        "numpy": env["numpy"],
        "python": env["python"],
    }


def write_cards(version_dir: Path, card: ModelCard, markdown: str, *, written_by: str) -> ModelCard:
    """Write ``card.yaml`` (headed by who wrote it) and ``MODEL_CARD.md`` into ``version_dir``."""
    header = (
        f"# Written by {written_by} from metrics.json: do not edit by hand.\n"
        "# The node checks every series against `input` before running this model.\n"
    )
    (version_dir / CARD_FILE).write_text(header + card.to_yaml(), encoding="utf-8")
    (version_dir / "MODEL_CARD.md").write_text(markdown, encoding="utf-8")
    return card


def rerender_cards(
    argv: list[str] | None,
    *,
    module: str,
    model_version_dir: Callable[[Path], Path],
    write: Callable[[Path, dict[str, Any]], ModelCard],
) -> int:
    """``python -m MODULE MODEL_REPOSITORY``: re-render both cards from ``metrics.json`` (no
    retraining); the exit status."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(f"usage: python -m {module} MODEL_REPOSITORY", file=sys.stderr)
        return 2
    version_dir = model_version_dir(Path(args[0]))
    metrics = json.loads((version_dir / "metrics.json").read_text(encoding="utf-8"))
    write(version_dir, metrics)
    print(f"wrote {version_dir / CARD_FILE} and {version_dir / 'MODEL_CARD.md'}")
    return 0
