"""Pieces every classifier shares: in-graph standardisation, logits -> probabilities, and
the optimisation settings each model's config inherits."""

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class TrainConfig:
    """Optimisation settings; each model's config inherits them and overrides what it must."""

    epochs: int = 150  # upper bound; early stopping on validation loss usually ends sooner
    batch_size: int = 64  # small data sets: small batches give enough steps per epoch
    lr: float = 3e-3  # peak AdamW learning rate of the one-cycle schedule
    weight_decay: float = 1e-2  # AdamW's decoupled decay; mild, as the models are small
    patience: int = 25  # epochs without a lower validation loss before training stops
    seed: int = 0  # weight initialisation and batch order: the same seed gives the same model


class Standardize(nn.Module):
    """(x - mean) / std with statistics fitted on the training split and kept as buffers.

    Living inside the model, it is saved in the state dict and exported with the graph, so the
    served model takes raw values and training and serving cannot disagree on preprocessing.
    `shape` is the statistics' shape without the batch axis: a 1 there means "shared along
    this axis" (one mean for all pixels), a full size means "one per feature".
    """

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape))
        self.register_buffer("std", torch.ones(shape))

    @torch.no_grad()
    def fit(self, x: Tensor) -> None:
        """Set the statistics from a training batch x of shape (N, *features)."""
        shared = [0] + [i + 1 for i, size in enumerate(self.mean.shape) if size == 1]
        self.mean.copy_(x.mean(dim=shared, keepdim=True)[0])
        # A constant feature would divide by zero; leave it unscaled instead.
        std = x.std(dim=shared, keepdim=True)[0]
        self.std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def to_probabilities(logits: Tensor) -> Tensor:
    """Logits -> class probabilities, (N, C) -> (N, C); one binary logit becomes two columns.

    A binary model has one logit (trained with BCEWithLogitsLoss); giving [P(0), P(1)] keeps
    every model's output a row of per-label probabilities whose argmax is the label.
    """
    if logits.shape[1] == 1:
        positive = torch.sigmoid(logits)  # (N, 1)
        return torch.cat([1.0 - positive, positive], dim=1)  # (N, 2)
    return torch.softmax(logits, dim=1)
