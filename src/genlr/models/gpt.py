"""A GPT-2-shaped causal language model (Radford et al., "Language Models are Unsupervised
Multitask Learners", 2019), small enough for a CPU.

Token and learned position embeddings, pre-LayerNorm blocks of causal self-attention
(``scaled_dot_product_attention`` with ``is_causal``: the fused kernel where PyTorch has one)
and a GELU MLP, a final LayerNorm, and an output layer tied to the token embedding. Weights
start as in GPT-2: normal with standard deviation 0.02, the projections into the residual
stream scaled down by ``sqrt(2 * depth)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from genlr.models.compat import token_task
from genlr.tasks.base import Task


class CausalSelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(width, 3 * width, bias=bias)
        self.out = nn.Linear(width, width, bias=bias)
        self.out_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        q, k, v = (t.view(batch, tokens, self.heads, width // self.heads).transpose(1, 2)
                   for t in self.qkv(x).split(width, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out_dropout(self.out(y.transpose(1, 2).reshape(batch, tokens, width)))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, bias=bias)
        self.attention = CausalSelfAttention(width, heads, dropout, bias)
        self.norm2 = nn.LayerNorm(width, bias=bias)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width, bias=bias), nn.GELU(),
                                 nn.Linear(4 * width, width, bias=bias), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    def __init__(self, vocab: int, context: int, width: int, depth: int, heads: int,
                 dropout: float, bias: bool) -> None:
        super().__init__()
        self.token = nn.Embedding(vocab, width)
        self.position = nn.Embedding(context, width)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.Sequential(*(Block(width, heads, dropout, bias) for _ in range(depth)))
        self.norm = nn.LayerNorm(width, bias=bias)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.token.weight  # tied: one matrix reads and writes characters
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                residual = name.endswith(("attention.out.weight", "mlp.2.weight"))
                nn.init.normal_(p, std=0.02 / (math.sqrt(2 * depth) if residual else 1.0))
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.dropout(self.token(ids) + self.position(positions))
        return self.head(self.norm(self.blocks(x)))


def gpt(task: Task, *, width: int = 128, depth: int = 4, heads: int = 4, dropout: float = 0.0,
        bias: bool = True) -> nn.Module:
    """Options:
        width, depth, heads: embedding width, blocks, attention heads (``heads`` divides
            ``width``).
        dropout: on the embeddings, attention weights and residual branches.
        bias: biases in the linear layers and LayerNorms (GPT-2 has them).
    """
    vocab, context = token_task(task, "gpt")
    if width % heads:
        raise ValueError(f"gpt: width {width} is not a multiple of heads {heads}")
    if min(width, depth, heads) < 1:
        raise ValueError(f"gpt: width, depth and heads must be positive, got {width}, {depth}, {heads}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"gpt: dropout must be in [0, 1), got {dropout}")
    return GPT(vocab, context, width, depth, heads, dropout, bias)
