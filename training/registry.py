"""The model registry: data, not code. It drives the CLI, the export and the tests alike;
adding a model is one entry here and one module under models/."""

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from . import data
from .models.common import TrainConfig
from .models.mlp import MLP, MLPConfig
from .models.resnet import CifarResNetConfig, ResNet, ResNetConfig
from .models.transformer import TransformerConfig, TransformerEncoder


@dataclass(frozen=True)
class ModelSpec:
    config: type[TrainConfig]  # the model's hyper-parameters; Model(config) needs nothing else
    module: Callable[..., nn.Module]  # the model class, called with one config
    dataset: Callable[[], data.Dataset]  # its bundled data set, split
    accuracy_bar: float  # held-out accuracy a full training run must reach (docs/training.md)


# The served classifiers: `all` in the CLIs, `make serve`, the tests.
REGISTRY: dict[str, ModelSpec] = {
    "mlp": ModelSpec(MLPConfig, MLP, data.breast_cancer, accuracy_bar=0.95),
    "resnet": ModelSpec(ResNetConfig, ResNet, data.digits_images, accuracy_bar=0.97),
    "transformer": ModelSpec(
        TransformerConfig, TransformerEncoder, data.digits_rows, accuracy_bar=0.95
    ),
}

# Only for `make bench`: trained and exported by name, into the benchmark's own repository.
BENCHMARK_MODELS: dict[str, ModelSpec] = {
    "resnet-cifar": ModelSpec(CifarResNetConfig, ResNet, data.random_images, accuracy_bar=0.0),
}
ALL_MODELS = {**REGISTRY, **BENCHMARK_MODELS}


def get(name: str) -> ModelSpec:
    try:
        return ALL_MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(ALL_MODELS)}") from None


def build(name: str, config: dict | None = None) -> nn.Module:
    """Rebuild a model from its registry name and a saved `asdict(config)`."""
    spec = get(name)
    cfg = spec.config(**config) if config is not None else spec.config()
    return spec.module(cfg)
