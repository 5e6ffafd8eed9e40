"""A small Vision Transformer (Dosovitskiy et al., ICLR 2021) for 28x28 and 32x32 images.

Patch embedding by a strided convolution, a learned class token and position embedding,
pre-norm encoder blocks, and a linear head on the class token.

Attention is written out (``softmax(q k^T / sqrt(d)) v``) by default rather than through
``scaled_dot_product_attention``: PyTorch's fused CPU kernel has neither a forward-mode
derivative nor a double backward, and the exact GeN methods need one of them (``d^T H d``).
``fused_attention=true`` takes the fused kernel for speed when only first-order methods run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genlr.models.compat import image_shape
from genlr.tasks.base import Task


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float, fused: bool) -> None:
        super().__init__()
        self.heads, self.fused, self.dropout = heads, fused, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, tokens, dim = x.shape
        q, k, v = self.qkv(x).view(n, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        p = self.dropout if self.training else 0.0
        if self.fused:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        else:
            weights = torch.softmax(q @ k.transpose(-2, -1) * (q.shape[-1] ** -0.5), dim=-1)
            y = F.dropout(weights, p) @ v
        return self.out(y.transpose(1, 2).reshape(n, tokens, dim))


class EncoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float, fused: bool) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attention = SelfAttention(dim, heads, dropout, fused)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    def __init__(self, image: tuple[int, int, int], classes: int, patch_size: int, dim: int,
                 depth: int, heads: int, mlp_ratio: float, dropout: float, fused: bool) -> None:
        super().__init__()
        channels, height, width = image
        tokens = (height // patch_size) * (width // patch_size) + 1
        self.patches = nn.Conv2d(channels, dim, kernel_size=patch_size, stride=patch_size)
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.position = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.blocks = nn.Sequential(*(EncoderBlock(dim, heads, mlp_ratio, dropout, fused) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patches(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(len(x), -1, -1), x], dim=1) + self.position
        return self.head(self.norm(self.blocks(x))[:, 0])


def vit(task: Task, *, patch_size: int = 4, dim: int = 128, depth: int = 6, heads: int = 4,
        mlp_ratio: float = 2.0, dropout: float = 0.0, fused_attention: bool = False) -> nn.Module:
    """Options:
        patch_size: must divide the image's height and width (4 for 28x28 and 32x32).
        dim, depth, heads, mlp_ratio: width, blocks, attention heads, MLP hidden/dim.
        dropout: on attention weights and MLP outputs.
        fused_attention: use PyTorch's fused attention kernel (faster; no exact GeN).
    """
    image = image_shape(task, "vit")
    if image[1] % patch_size or image[2] % patch_size:
        raise ValueError(f"vit: patch_size {patch_size} does not divide the {image[1]}x{image[2]} images of task {task.name!r}")
    if dim % heads:
        raise ValueError(f"vit: dim {dim} is not a multiple of heads {heads}")
    return VisionTransformer(image, task.num_outputs, patch_size, dim, depth, heads, mlp_ratio, dropout, fused_attention)
