"""Train and evaluate the ``lung_seg`` model, and write it into the model repository.

Run from the repository root::

    python -m training.lung_seg.train --data ../shared/data --out model_repository

Writes ``<out>/lung_seg/config.pbtxt`` and, in ``<out>/lung_seg/1/``: ``model.pt`` (state_dict),
``network.json``, ``metrics.json``, ``card.yaml`` and ``MODEL_CARD.md`` (both cards filled in from
the metrics).
Everything is seeded and torch runs in deterministic mode on 2 threads; see README.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from monai.losses.dice import DiceCELoss
from monai.networks.nets.unet import UNet
from torch.nn import functional

from node.backends.torch import NETWORK_FILE, WEIGHTS_FILE, TorchBackend
from node.pipelines.lung_seg import (
    INPUT_NAME,
    INPUT_SIZE,
    OUTPUT_NAME,
    LungSegmentation,
    logits_to_mask,
    preprocess,
    resize_slices,
)
from training.common import environment, weights_record
from training.lung_seg.card import write_cards
from training.lung_seg.data import (
    EXTRA_TRAINING,
    LIDC,
    LabelledSeries,
    held_out_slices,
    load_labelled,
    load_series,
)
from training.lung_seg.repository import (
    MODEL_NAME,
    MODEL_VERSION,
    NETWORK_KWARGS,
    config_pbtxt,
    network_description,
    write_json,
)

COMMAND = "python -m training.lung_seg.train --data ../shared/data --out model_repository"
#: Out-of-distribution sanity check only (never trained on): a head CT has no lung.
HEAD_CT = "dcm_qa_ct/GE_HiSpeedDual_head_CT_gantry_tilt_variable_spacing"


def main(argv: list[str] | None = None) -> int:
    """Train, evaluate and write the model; print progress per epoch.

    Parameters
    ----------
    argv
        Command-line arguments (``sys.argv[1:]`` when None).

    Returns
    -------
    int
        The exit status.
    """
    args = _parse(argv)
    started = time.perf_counter()
    _seed_everything(args.seed, args.threads)
    lidc = load_labelled(args.data, LIDC)
    extra = [load_labelled(args.data, name) for name in EXTRA_TRAINING]
    held_out = held_out_slices(lidc.labels.shape[0])
    images, targets = _training_set(lidc, held_out, extra)
    print(f"training on {images.shape[0]} slices, {int(held_out.sum())} LIDC slices held out")

    network = UNet(**NETWORK_KWARGS)
    train_start = time.perf_counter()
    final_loss = _train(network, images, targets, lidc, held_out, args)
    train_seconds = time.perf_counter() - train_start

    version_dir = args.out / MODEL_NAME / MODEL_VERSION
    version_dir.mkdir(parents=True, exist_ok=True)
    (args.out / MODEL_NAME / "config.pbtxt").write_text(config_pbtxt(), encoding="utf-8")
    write_json(version_dir / NETWORK_FILE, network_description())
    torch.save(network.state_dict(), version_dir / WEIGHTS_FILE)

    metrics = _evaluate(args, lidc, extra, held_out)
    weights = (version_dir / WEIGHTS_FILE).read_bytes()
    metrics.update(
        {
            "command": COMMAND,
            "seed": args.seed,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "learning_rate": args.lr,
            "threads": args.threads,
            "training_slices": {LIDC: int((~held_out).sum())}
            | {s.name: int(s.labels.shape[0]) for s in extra},
            "held_out_slice_indices": [int(k) for k in np.flatnonzero(held_out)],
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
        f"held-out Dice {metrics['held_out_dice']:.4f}, whole-volume Dice "
        f"{metrics['whole_volume_dice']:.4f}, training {train_seconds:.0f} s; "
        f"wrote {version_dir}"
    )
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the shared data folder")
    parser.add_argument("--out", type=Path, required=True, help="the model repository folder")
    parser.add_argument("--epochs", type=int, default=120)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=20240607)
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args(argv)


def _seed_everything(seed: int, threads: int) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    np.random.seed(seed)  # nothing here uses the global generator; seeded in case a library does
    torch.use_deterministic_algorithms(True)


def _training_set(
    lidc: LabelledSeries, held_out: npt.NDArray[np.bool_], extra: list[LabelledSeries]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Network inputs and float lung targets at network size, training slices only."""
    volumes = [lidc.volume.array[~held_out]] + [s.volume.array for s in extra]
    masks = [lidc.labels[~held_out]] + [s.labels for s in extra]
    images = np.concatenate([preprocess(v) for v in volumes])
    targets = np.concatenate([resize_slices(m.astype(np.float32), INPUT_SIZE) for m in masks])
    return images, (targets > 0.5).astype(np.float32)[:, np.newaxis]


def _augment(
    images: torch.Tensor, targets: torch.Tensor, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random left-right flip, rotation (±10°), scale (±10%), shift (±8%), contrast (±5%)."""
    n = images.shape[0]
    angle = np.radians(rng.uniform(-10.0, 10.0, n))
    scale = rng.uniform(0.9, 1.1, n)
    flip = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    shift = rng.uniform(-0.08, 0.08, (n, 2))
    gain = rng.uniform(0.95, 1.05, n)
    offset = rng.uniform(-0.02, 0.02, n)
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    theta = np.stack(
        [
            np.stack([cos * flip, -sin, shift[:, 0]], axis=1),
            np.stack([sin * flip, cos, shift[:, 1]], axis=1),
        ],
        axis=1,
    ).astype(np.float32)
    grid = functional.affine_grid(torch.from_numpy(theta), list(images.shape), align_corners=False)
    moved = functional.grid_sample(images, grid, padding_mode="zeros", align_corners=False)
    moved = moved * torch.from_numpy(gain.astype(np.float32)).view(n, 1, 1, 1)
    moved = moved + torch.from_numpy(offset.astype(np.float32)).view(n, 1, 1, 1)
    labels = functional.grid_sample(targets, grid, padding_mode="zeros", align_corners=False)
    return moved, (labels > 0.5).to(torch.float32)


def _train(
    network: torch.nn.Module,
    images: npt.NDArray[np.float32],
    targets: npt.NDArray[np.float32],
    lidc: LabelledSeries,
    held_out: npt.NDArray[np.bool_],
    args: argparse.Namespace,
) -> float:
    rng = np.random.default_rng(args.seed)
    steps_per_epoch = -(-images.shape[0] // args.batch_size)
    optimizer = torch.optim.AdamW(network.parameters(), lr=args.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch, pct_start=0.1
    )
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
    x_all, y_all = torch.from_numpy(images), torch.from_numpy(targets)
    val_x = torch.from_numpy(preprocess(lidc.volume.array[held_out]))
    val_y = resize_slices(lidc.labels[held_out].astype(np.float32), INPUT_SIZE) > 0.5
    started = time.perf_counter()
    mean_loss = float("nan")
    for epoch in range(1, args.epochs + 1):
        network.train()
        order = rng.permutation(images.shape[0])
        losses = []
        for step in range(steps_per_epoch):
            index = torch.from_numpy(order[step * args.batch_size : (step + 1) * args.batch_size])
            x, y = _augment(x_all[index], y_all[index], rng)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_function(network(x), y)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
        mean_loss = float(np.mean(losses))
        line = f"epoch {epoch:3d}/{args.epochs} loss {mean_loss:.4f}"
        if epoch % 10 == 0 or epoch == args.epochs:
            network.eval()
            with torch.inference_mode():
                predicted = network(val_x).argmax(dim=1).numpy().astype(bool)
            line += f" held-out Dice@{INPUT_SIZE[0]} {_dice(predicted, val_y):.4f}"
        print(f"{line} ({time.perf_counter() - started:.0f} s)", flush=True)
    network.eval()
    return mean_loss


def _evaluate(
    args: argparse.Namespace,
    lidc: LabelledSeries,
    extra: list[LabelledSeries],
    held_out: npt.NDArray[np.bool_],
) -> dict[str, Any]:
    """Dice of the node's own pipeline (through the embedded backend) at full resolution."""
    backend = TorchBackend(args.out)
    pipeline = LungSegmentation()
    volume, reference = lidc.volume, lidc.labels
    predicted = _segment(pipeline, backend, volume)
    raw = _raw_mask(backend, volume.array)
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    per_slice = [
        {
            "slice": int(k),
            "dice": round(_dice(predicted[k], reference[k]), 5),
            "reference_pixels": int(reference[k].sum()),
        }
        for k in np.flatnonzero(held_out)
    ]
    metrics: dict[str, Any] = {
        "model": MODEL_NAME,
        "version": MODEL_VERSION,
        "held_out_dice": round(_dice(predicted[held_out], reference[held_out]), 5),
        "held_out_dice_before_postprocessing": round(_dice(raw[held_out], reference[held_out]), 5),
        "training_slices_dice": round(_dice(predicted[~held_out], reference[~held_out]), 5),
        "whole_volume_dice": round(_dice(predicted, reference), 5),
        "held_out_per_slice": per_slice,
        "reference_lung_ml": round(float(reference.sum()) * voxel_ml, 1),
        "predicted_lung_ml": round(float(predicted.sum()) * voxel_ml, 1),
        "evaluated_at": f"{volume.array.shape[1]}x{volume.array.shape[2]}, full pipeline "
        "(node.pipelines.lung_seg.LungSegmentation.run with node.backends.torch.TorchBackend)",
    }
    for series in extra:
        mask = _segment(pipeline, backend, series.volume)
        metrics[f"training_series_dice[{series.name}]"] = round(_dice(mask, series.labels), 5)
    head = load_series(args.data, HEAD_CT)
    head_mask = _segment(pipeline, backend, head)
    metrics["head_ct_predicted_lung_ml"] = round(
        float(head_mask.sum()) * float(np.prod(head.spacing)) / 1000.0, 1
    )
    return metrics


def _segment(pipeline: LungSegmentation, backend: TorchBackend, volume: Any) -> Any:
    findings = pipeline.run(volume, backend, MODEL_NAME, MODEL_VERSION)
    return findings.label_maps[0].array == 1


def _raw_mask(backend: TorchBackend, hu: npt.NDArray[np.float32]) -> npt.NDArray[np.bool_]:
    logits = backend.infer(MODEL_NAME, MODEL_VERSION, {INPUT_NAME: preprocess(hu)})[OUTPUT_NAME]
    return logits_to_mask(logits, (hu.shape[1], hu.shape[2]))


def _dice(predicted: npt.NDArray[np.bool_], reference: npt.NDArray[np.bool_]) -> float:
    total = int(predicted.sum()) + int(reference.sum())
    if total == 0:
        return 1.0
    return 2.0 * int((predicted & reference).sum()) / total


if __name__ == "__main__":
    sys.exit(main())
