"""The seed's attention -> TransformerBlock -> TransformerEncoder, as a digit classifier.

Each 8x8 image is a sequence of 8 row-tokens of 8 pixels; a linear embedding and a learned
position embedding lift the tokens to `embed_dim` before the seed's encoder.
"""

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .common import Standardize, TrainConfig, to_probabilities


@dataclass
class TransformerConfig(TrainConfig):
    seq_len: int = 8  # tokens per input: the image's rows
    token_dim: int = 8  # values per token: the pixels of a row
    embed_dim: int = 32  # model width; also the attention width, as in the seed's block
    ffn_hidden_dim: int = 64  # hidden width of each block's feed-forward network
    num_layers: int = 2  # TransformerBlocks stacked
    num_classes: int = 10
    lr: float = 2e-3


class SelfAttention(nn.Module):
    """Single-head scaled dot-product self-attention.

    Corrected from the seed, where the class was named AttentionLayer but constructed as
    SimpleAttention, and the scale was a plain tensor that would not follow `.to(device)`;
    here it is a Python float, a constant in the exported graph.
    """

    def __init__(self, input_dim: int, attention_dim: int) -> None:
        super().__init__()
        self.query = nn.Linear(input_dim, attention_dim)
        self.key = nn.Linear(input_dim, attention_dim)
        self.value = nn.Linear(input_dim, attention_dim)
        self.scale = float(attention_dim) ** -0.5

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        q, k, v = self.query(x), self.key(x), self.value(x)  # each (N, T, A)
        scores = torch.matmul(q, k.transpose(-2, -1)) * self.scale  # (N, T, T)
        weights = torch.softmax(scores, dim=-1)
        return torch.matmul(weights, v), weights  # (N, T, A), (N, T, T)


class TransformerBlock(nn.Module):
    """Self-attention and a feed-forward network, each with a residual and post-LayerNorm."""

    def __init__(self, embed_dim: int, ffn_hidden_dim: int) -> None:
        super().__init__()
        self.attention = SelfAttention(embed_dim, embed_dim)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.norm2 = nn.LayerNorm(embed_dim)
        self.ffn = nn.Sequential(
            nn.Linear(embed_dim, ffn_hidden_dim), nn.ReLU(), nn.Linear(ffn_hidden_dim, embed_dim)
        )

    def forward(self, x: Tensor) -> Tensor:
        attended, _ = self.attention(x)
        x = self.norm1(attended + x)
        return self.norm2(self.ffn(x) + x)


class TransformerEncoder(nn.Module):
    """The seed's encoder: stacked blocks, then a linear head on the flattened sequence."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.standardize = Standardize((1, 1))  # one mean/std for all pixels
        self.embed = nn.Linear(cfg.token_dim, cfg.embed_dim)
        self.position = nn.Parameter(torch.zeros(1, cfg.seq_len, cfg.embed_dim))
        nn.init.normal_(self.position, std=0.02)
        self.layers = nn.ModuleList(
            [TransformerBlock(cfg.embed_dim, cfg.ffn_hidden_dim) for _ in range(cfg.num_layers)]
        )
        self.classifier = nn.Linear(cfg.embed_dim * cfg.seq_len, cfg.num_classes)

    def logits(self, x: Tensor) -> Tensor:
        x = self.embed(self.standardize(x)) + self.position  # (N, T, token) -> (N, T, E)
        for layer in self.layers:
            x = layer(x)
        return self.classifier(x.flatten(1))  # (N, T * E) -> (N, classes)

    def forward(self, x: Tensor) -> Tensor:
        return to_probabilities(self.logits(x))
