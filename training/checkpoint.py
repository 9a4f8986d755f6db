"""A checkpoint is plain data (state dict, config, labels) so it loads with
`torch.load(..., weights_only=True)`: nothing is unpickled as code."""

from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from . import registry
from .data import Dataset
from .models.common import TrainConfig

CHECKPOINT_NAME = "checkpoint.pt"


def save_checkpoint(
    path: Path, name: str, cfg: TrainConfig, model: nn.Module, dataset: Dataset
) -> None:
    torch.save(
        {
            "model": name,
            "config": asdict(cfg),
            "state_dict": model.state_dict(),
            "task": dataset.task,
            "labels": list(dataset.labels),
            "input_shape": list(dataset.input_shape),
        },
        path,
    )


def load_checkpoint(path: Path) -> tuple[dict, nn.Module]:
    """The checkpoint's contents and its model, rebuilt from the saved config, in eval mode."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model = registry.build(checkpoint["model"], checkpoint["config"])
    model.load_state_dict(checkpoint["state_dict"])
    return checkpoint, model.eval()
