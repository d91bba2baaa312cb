"""Train and evaluate the ``nodule_det`` model, and write it into the model repository.

Run from the repository root::

    python -m training.nodule_det.train --data ../shared/data --out model_repository

Writes ``<out>/nodule_det/config.pbtxt`` and, in ``<out>/nodule_det/1/``: ``model.pt``
(state_dict), ``network.json``, ``model.py`` (Triton), ``metrics.json``, ``card.yaml`` and
``MODEL_CARD.md``. Everything is seeded and torch runs in deterministic mode on 2 threads; see
README.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from monai.losses.dice import DiceCELoss
from monai.networks.nets.unet import UNet

from node.backends.embedded import EmbeddedBackend
from node.backends.torch import NETWORK_FILE, WEIGHTS_FILE
from training.common import environment, weights_record
from training.nodule_det.card import write_cards
from training.nodule_det.data import GUARD, HELD_OUT, LIDC, load_series, training_slices
from training.nodule_det.evaluate import evaluate
from training.nodule_det.repository import (
    MODEL_NAME,
    MODEL_VERSION,
    NETWORK_KWARGS,
    config_pbtxt,
    copy_triton_model,
    network_description,
    write_json,
)
from training.nodule_det.samples import PATCH, SampleMaker

COMMAND = "python -m training.nodule_det.train --data ../shared/data --out model_repository"


def main(argv: list[str] | None = None) -> int:
    """Train, evaluate and write the model; print progress.

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
    series = load_series(args.data)
    slices = training_slices(series)
    maker = SampleMaker(series, slices)
    rng = np.random.default_rng(args.seed)
    pool_start = time.perf_counter()
    samples = [maker.make(rng) for _ in range(args.samples)]
    images = np.stack([s.image for s in samples])
    targets = np.stack([s.target for s in samples])
    positive = int((targets.reshape(len(samples), -1).max(axis=1) > 0).sum())
    print(
        f"{len(samples)} patches ({positive} with nodule pixels) from {len(slices)} training "
        f"slices in {time.perf_counter() - pool_start:.0f} s; slices {HELD_OUT[0]}-"
        f"{HELD_OUT[-1]} held out"
    )

    network = UNet(**NETWORK_KWARGS)
    train_start = time.perf_counter()
    final_loss = _train(network, images, targets, rng, args)
    train_seconds = time.perf_counter() - train_start

    version_dir = args.out / MODEL_NAME / MODEL_VERSION
    version_dir.mkdir(parents=True, exist_ok=True)
    (args.out / MODEL_NAME / "config.pbtxt").write_text(config_pbtxt(), encoding="utf-8")
    write_json(version_dir / NETWORK_FILE, network_description())
    torch.save(network.state_dict(), version_dir / WEIGHTS_FILE)
    copy_triton_model(version_dir)

    backend = EmbeddedBackend(args.out, num_threads=args.threads)
    metrics: dict[str, Any] = {"model": MODEL_NAME, "version": MODEL_VERSION}
    metrics.update(evaluate(series, backend, MODEL_NAME, MODEL_VERSION, seed=args.seed + 1))
    weights = (version_dir / WEIGHTS_FILE).read_bytes()
    metrics.update(
        {
            "evaluated_at": "512x512, full pipeline (node.pipelines.nodule_det.NoduleDetection"
            ".run with node.backends.embedded.EmbeddedBackend)",
            "command": COMMAND,
            "seed": args.seed,
            "iterations": args.iterations,
            "batch_size": args.batch_size,
            "learning_rate": args.lr,
            "patches": args.samples,
            "patches_with_nodule_pixels": positive,
            "patch_size": PATCH,
            "threads": args.threads,
            "training_slice_indices": slices,
            "guard_slice_indices": list(GUARD),
            "training_series": LIDC,
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
        f"held-out synthetic sensitivity {metrics['synthetic_sensitivity']:.3f} "
        f"({metrics['synthetic_found']}/{metrics['synthetic_nodules']}), false positives per "
        f"held-out slab {metrics['synthetic_false_positives_per_slab']}, real nodule found: "
        f"{metrics['real_nodule_found']}; training {train_seconds:.0f} s; wrote {version_dir}"
    )
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the shared data folder")
    parser.add_argument("--out", type=Path, required=True, help="the model repository folder")
    parser.add_argument("--iterations", type=int, default=1200)
    parser.add_argument("--samples", type=int, default=6000, help="patches made once")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=20240917)
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args(argv)


def _seed_everything(seed: int, threads: int) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    np.random.seed(seed)  # nothing here uses the global generator; seeded in case a library does
    torch.use_deterministic_algorithms(True)


def _train(
    network: torch.nn.Module,
    images: npt.NDArray[np.float32],
    targets: npt.NDArray[np.float32],
    rng: np.random.Generator,
    args: argparse.Namespace,
) -> float:
    """Dice + binary cross-entropy, AdamW with a one-cycle schedule; random left-right flips
    and a small contrast change (±5 %) per patch. Returns the mean loss of the last 50 steps."""
    loss_function = DiceCELoss(sigmoid=True, batch=True)
    optimizer = torch.optim.AdamW(network.parameters(), lr=args.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, total_steps=args.iterations
    )
    network.train()
    recent: list[float] = []
    for step in range(1, args.iterations + 1):
        pick = rng.integers(0, len(images), args.batch_size)
        batch, target = images[pick].copy(), targets[pick].copy()
        flip = rng.random(args.batch_size) < 0.5
        batch[flip] = batch[flip][..., ::-1]
        target[flip] = target[flip][..., ::-1]
        batch *= rng.uniform(0.95, 1.05, (args.batch_size, 1, 1, 1)).astype(np.float32)
        optimizer.zero_grad()
        output = network(torch.from_numpy(np.ascontiguousarray(batch)))
        loss = loss_function(output, torch.from_numpy(np.ascontiguousarray(target)))
        loss.backward()
        optimizer.step()
        schedule.step()
        recent = [*recent[-49:], float(loss.item())]
        if step % 50 == 0 or step == args.iterations:
            print(f"step {step}/{args.iterations} loss {np.mean(recent):.4f}", flush=True)
    network.eval()
    return float(np.mean(recent))


if __name__ == "__main__":
    raise SystemExit(main())
