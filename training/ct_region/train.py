"""Train and evaluate the ``ct_region`` classifier, and write it into the model repository.

Run from the repository root::

    python -m training.ct_region.train --data ../shared/data --out model_repository

Writes ``<out>/ct_region/config.pbtxt`` and, in ``<out>/ct_region/1/``: ``model.ts``
(TorchScript), ``network.json``, ``model.py`` (Triton), ``metrics.json``, ``card.yaml`` and
``MODEL_CARD.md``. Seeded, deterministic, 2 threads; about a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from monai.networks.nets.densenet import DenseNet
from torch.nn import functional

from node.backends.embedded import EmbeddedBackend
from node.backends.torch import NETWORK_FILE
from node.pipelines.ct_region import CLASSES, BodyRegion, preprocess
from training.common import environment, weights_record
from training.ct_region.card import write_cards
from training.ct_region.data import (
    HELD_OUT_EVERY,
    HELD_OUT_OFFSET,
    LabelledSlices,
    load_independent,
    load_training_series,
)
from training.ct_region.repository import (
    MODEL_NAME,
    MODEL_VERSION,
    NETWORK_KWARGS,
    TORCHSCRIPT_FILE,
    config_pbtxt,
    copy_triton_model,
    network_description,
    write_json,
)

COMMAND = "python -m training.ct_region.train --data ../shared/data --out model_repository"


def _held_out(series: LabelledSlices) -> npt.NDArray[np.bool_]:
    index = np.arange(len(series.labels))
    return (index % HELD_OUT_EVERY == HELD_OUT_OFFSET) & (series.labels >= 0)


def main(argv: list[str] | None = None) -> int:
    """Train, evaluate and write the classifier; print progress.

    Returns
    -------
    int
        The exit status.
    """
    args = _parse(argv)
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(args.seed)
    series = load_training_series(args.data)
    images, labels = [], []
    for s in series:
        keep = (s.labels >= 0) & ~_held_out(s)
        images.append(preprocess(s.slices[keep]))
        labels.append(s.labels[keep])
    x, y = np.concatenate(images), np.concatenate(labels)
    counts = np.bincount(y, minlength=len(CLASSES))
    per_class = ", ".join(f"{c.meaning} {n}" for c, n in zip(CLASSES, counts, strict=True))
    print(f"training on {len(y)} slices ({per_class})")

    network = DenseNet(**NETWORK_KWARGS)
    train_start = time.perf_counter()
    final_loss = _train(network, x, y, rng, args)
    train_seconds = time.perf_counter() - train_start

    version_dir = args.out / MODEL_NAME / MODEL_VERSION
    version_dir.mkdir(parents=True, exist_ok=True)
    (args.out / MODEL_NAME / "config.pbtxt").write_text(config_pbtxt(), encoding="utf-8")
    write_json(version_dir / NETWORK_FILE, network_description())
    network.eval()
    with torch.no_grad():
        traced = torch.jit.trace(network, torch.from_numpy(x[:2]))
    torch.jit.save(traced, str(version_dir / TORCHSCRIPT_FILE))
    copy_triton_model(version_dir)

    metrics: dict[str, Any] = {"model": MODEL_NAME, "version": MODEL_VERSION}
    backend = EmbeddedBackend(args.out, num_threads=args.threads)
    metrics.update(_evaluate(series, load_independent(args.data), backend))
    weights = (version_dir / TORCHSCRIPT_FILE).read_bytes()
    metrics.update(
        {
            "evaluated_at": "full pipeline (node.pipelines.ct_region.BodyRegion with "
            "node.backends.embedded.EmbeddedBackend on model.ts)",
            "command": COMMAND,
            "seed": args.seed,
            "iterations": args.iterations,
            "batch_size": args.batch_size,
            "learning_rate": args.lr,
            "threads": args.threads,
            "training_slices": {
                s.name: int(((s.labels >= 0) & ~_held_out(s)).sum()) for s in series
            },
            "training_slices_per_class": {
                c.meaning: int(n) for c, n in zip(CLASSES, counts, strict=True)
            },
            "final_training_loss": round(final_loss, 5),
            "training_seconds": round(train_seconds, 1),
            "total_seconds": round(time.perf_counter() - started, 1),
            **weights_record(weights, network),
            "environment": environment(args.threads),
        }
    )
    write_json(version_dir / "metrics.json", metrics)
    write_cards(version_dir, metrics)
    print(
        f"held-out slice accuracy {metrics['held_out_accuracy']:.3f} "
        f"({metrics['held_out_slices']} slices), independent slices "
        f"{metrics['independent_accuracy']:.3f} ({metrics['independent_slices']}); "
        f"training {train_seconds:.0f} s; wrote {version_dir}"
    )
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the shared data folder")
    parser.add_argument("--out", type=Path, required=True, help="the model repository folder")
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=20241011)
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args(argv)


def _augment(batch: npt.NDArray[np.float32], rng: np.random.Generator) -> torch.Tensor:
    """Random left-right flip, rotation (±15°), scale (±15 %), shift (±10 %), contrast (±10 %)."""
    n = batch.shape[0]
    angle = np.radians(rng.uniform(-15.0, 15.0, n))
    scale = rng.uniform(0.85, 1.15, n)
    flip = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    shift = rng.uniform(-0.1, 0.1, (n, 2))
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    theta = np.stack(
        [
            np.stack([cos * flip, -sin, shift[:, 0]], axis=1),
            np.stack([sin * flip, cos, shift[:, 1]], axis=1),
        ],
        axis=1,
    ).astype(np.float32)
    images = torch.from_numpy(batch)
    grid = functional.affine_grid(torch.from_numpy(theta), list(images.shape), align_corners=False)
    moved = functional.grid_sample(images, grid, padding_mode="zeros", align_corners=False)
    gain = torch.from_numpy(rng.uniform(0.9, 1.1, n).astype(np.float32)).view(n, 1, 1, 1)
    return moved * gain


def _train(
    network: torch.nn.Module,
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    rng: np.random.Generator,
    args: argparse.Namespace,
) -> float:
    """Cross-entropy, classes sampled equally often, AdamW with a one-cycle schedule."""
    by_class = [np.flatnonzero(y == c) for c in range(len(CLASSES))]
    optimizer = torch.optim.AdamW(network.parameters(), lr=args.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, total_steps=args.iterations
    )
    network.train()
    recent: list[float] = []
    for step in range(1, args.iterations + 1):
        classes = rng.integers(0, len(CLASSES), args.batch_size)
        pick = np.array([rng.choice(by_class[c]) for c in classes])
        optimizer.zero_grad()
        output = network(_augment(x[pick], rng))
        loss = functional.cross_entropy(output, torch.from_numpy(y[pick]))
        loss.backward()
        optimizer.step()
        schedule.step()
        recent = [*recent[-49:], float(loss.item())]
        if step % 50 == 0 or step == args.iterations:
            print(f"step {step}/{args.iterations} loss {np.mean(recent):.4f}", flush=True)
    network.eval()
    return float(np.mean(recent))


def _evaluate(
    series: list[LabelledSlices], independent: list[LabelledSlices], backend: EmbeddedBackend
) -> dict[str, Any]:
    """Slice accuracy on held-out and independent slices; series decisions, all through the
    node's pipeline."""
    pipeline = BodyRegion()
    held_right = held_total = 0
    decisions: dict[str, Any] = {}
    for s in series:
        probabilities = pipeline.slice_probabilities(s.volume, backend, MODEL_NAME, MODEL_VERSION)
        mask = _held_out(s)
        held_right += int((probabilities[mask].argmax(axis=1) == s.labels[mask]).sum())
        held_total += int(mask.sum())
        decisions[s.name] = _decision(pipeline, s, backend)
    independent_right = independent_total = 0
    for s in independent:
        probabilities = pipeline.slice_probabilities(s.volume, backend, MODEL_NAME, MODEL_VERSION)
        known = s.labels >= 0
        independent_right += int((probabilities[known].argmax(axis=1) == s.labels[known]).sum())
        independent_total += int(known.sum())
        decisions[s.name] = _decision(pipeline, s, backend)
    return {
        "held_out_accuracy": round(held_right / held_total, 4),
        "held_out_slices": held_total,
        "held_out_correct": held_right,
        "independent_accuracy": round(independent_right / independent_total, 4),
        "independent_slices": independent_total,
        "independent_correct": independent_right,
        "series_decisions": decisions,
    }


def _decision(pipeline: BodyRegion, s: LabelledSlices, backend: EmbeddedBackend) -> dict[str, Any]:
    [result] = pipeline.run(s.volume, backend, MODEL_NAME, MODEL_VERSION).classifications
    return {"class": result.concept.meaning, "probability": round(result.probability, 4)}


if __name__ == "__main__":
    raise SystemExit(main())
