"""The seed's multilayer perceptron: Linear-ReLU-Linear(-ReLU-Linear), one logit, binary."""

from dataclasses import dataclass

from torch import Tensor, nn

from .common import Standardize, TrainConfig, to_probabilities


@dataclass
class MLPConfig(TrainConfig):
    in_features: int = 30  # the breast-cancer set's 30 measurements
    hidden: tuple[int, ...] = (32, 16)  # two hidden layers: the seed's 3-layer MLP
    num_classes: int = 2  # binary: trained as one logit with BCEWithLogitsLoss
    lr: float = 3e-3


class MLP(nn.Module):
    def __init__(self, cfg: MLPConfig) -> None:
        super().__init__()
        if cfg.num_classes != 2:
            raise ValueError(f"MLP is a binary classifier; num_classes={cfg.num_classes}")
        self.standardize = Standardize((cfg.in_features,))  # one mean/std per feature
        layers: list[nn.Module] = []
        width = cfg.in_features
        for hidden in cfg.hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, 1))  # one logit: P(class 1) = sigmoid(logit)
        self.net = nn.Sequential(*layers)

    def logits(self, x: Tensor) -> Tensor:
        return self.net(self.standardize(x))  # (N, 30) -> (N, 1)

    def forward(self, x: Tensor) -> Tensor:
        return to_probabilities(self.logits(x))  # (N, 2)
