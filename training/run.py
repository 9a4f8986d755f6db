"""One training run of a registered model, written to `<out>/<model>/`:
checkpoint.pt, metrics.json and curves.png."""

import json
import platform
from dataclasses import asdict, replace
from pathlib import Path

import torch

from . import registry
from .checkpoint import CHECKPOINT_NAME, save_checkpoint
from .plot import plot_curves
from .train import TrainResult, fit, select_device

DRY_RUN_EPOCHS = 2  # --dry-run: every step runs, in seconds
DRY_RUN_BATCHES = 3  # training batches per dry-run epoch
METRICS_NAME = "metrics.json"
CURVES_NAME = "curves.png"


def train_and_save(
    name: str,
    out_dir: Path,
    device: str = "auto",
    dry_run: bool = False,
    seed: int | None = None,
    progress: bool = True,
) -> TrainResult:
    spec = registry.get(name)
    cfg = spec.config()
    if seed is not None:
        cfg = replace(cfg, seed=seed)
    if dry_run:
        cfg = replace(cfg, epochs=DRY_RUN_EPOCHS)
    dataset = spec.dataset()
    result = fit(
        name,
        spec.module,
        cfg,
        dataset,
        select_device(device),
        max_batches=DRY_RUN_BATCHES if dry_run else None,
        progress=progress,
    )

    run_dir = out_dir / name
    run_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(run_dir / CHECKPOINT_NAME, name, cfg, result.model, dataset)
    metrics = {
        "model": name,
        "dataset": dataset.name,
        "dry_run": dry_run,
        "test_accuracy": result.test_accuracy,
        "test_loss": result.test_loss,
        "accuracy_bar": spec.accuracy_bar,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "stopped_early": result.stopped_early,
        "wall_time_s": round(result.wall_time_s, 2),
        "device": result.device,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "split_sizes": {s: len(getattr(dataset, s).y) for s in ("train", "val", "test")},
        "config": asdict(cfg),
        "history": result.history,
    }
    (run_dir / METRICS_NAME).write_text(json.dumps(metrics, indent=2) + "\n")
    title = f"{name}: test accuracy {result.test_accuracy:.4f} ({result.wall_time_s:.0f} s)"
    plot_curves(result.history, result.best_epoch, title, run_dir / CURVES_NAME)
    return result
