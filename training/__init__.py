"""Training: the registered classifiers, their bundled data and the training loop."""

from .checkpoint import load_checkpoint, save_checkpoint
from .registry import REGISTRY, ModelSpec, build
from .run import train_and_save

__all__ = ["REGISTRY", "ModelSpec", "build", "load_checkpoint", "save_checkpoint", "train_and_save"]
