"""A small ResNet stacked from the seed's ResNetBlock."""

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from .common import Standardize, TrainConfig, to_probabilities


@dataclass
class ResNetConfig(TrainConfig):
    in_channels: int = 1  # digits are grey: 1x8x8
    image_size: int = 8  # height = width of the input
    widths: tuple[int, ...] = (16, 32, 64)  # channels per stage; each later stage halves H, W
    blocks: tuple[int, ...] = (1, 1, 1)  # ResNetBlocks per stage; 8x8 inputs need no depth
    num_classes: int = 10
    lr: float = 3e-3


@dataclass
class CifarResNetConfig(ResNetConfig):
    """The same ResNet at CIFAR-10's input size, for the benchmark where compute dominates
    (about 40 times the digits model's work per image). It trains one epoch on random data:
    the point is its weights' cost, not their value."""

    in_channels: int = 3
    image_size: int = 32
    epochs: int = 1


class ResNetBlock(nn.Module):
    """The seed's block: conv3x3-BN-ReLU-conv3x3-BN plus the input, then ReLU.

    Corrected for export: the shortcut is always a module (Identity when shapes match) instead
    of `if self.downsample:`, which TorchScript cannot compile, and the sum is not in place.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            # The seed's "downsample": a 1x1 conv so the residual matches the new shape.
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, cfg: ResNetConfig) -> None:
        super().__init__()
        if len(cfg.widths) != len(cfg.blocks):
            raise ValueError(f"widths {cfg.widths} and blocks {cfg.blocks} need one entry each")
        self.standardize = Standardize((cfg.in_channels, 1, 1))  # one mean/std per channel
        self.stem = nn.Sequential(
            nn.Conv2d(cfg.in_channels, cfg.widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(cfg.widths[0]),
            nn.ReLU(),
        )
        stages: list[nn.Module] = []
        width = cfg.widths[0]
        for stage, (out_width, count) in enumerate(zip(cfg.widths, cfg.blocks, strict=True)):
            for block in range(count):
                stride = 2 if stage > 0 and block == 0 else 1
                stages.append(ResNetBlock(width, out_width, stride))
                width = out_width
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(width, cfg.num_classes)

    def logits(self, x: Tensor) -> Tensor:
        x = self.stem(self.standardize(x))  # (N, C, H, W) -> (N, w0, H, W)
        x = self.stages(x)  # -> (N, w_last, H / 2^(stages-1), W / 2^(stages-1))
        x = x.mean(dim=(2, 3))  # global average pool -> (N, w_last)
        return self.head(x)  # (N, classes)

    def forward(self, x: Tensor) -> Tensor:
        return to_probabilities(self.logits(x))
