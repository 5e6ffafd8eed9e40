"""Small models and problems shared by tests/test_methods_*.py (float64 where analytic)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Quadratic(nn.Module):
    """``L(theta) = 1/2 theta^T A theta - b^T theta``; the batch is ignored."""

    def __init__(self, n: int = 6, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        q = torch.randn(n, n, generator=g, dtype=torch.float64)
        self.register_buffer("A", q @ q.T + n * torch.eye(n, dtype=torch.float64))
        self.register_buffer("b", torch.randn(n, generator=g, dtype=torch.float64))
        self.theta = nn.Parameter(torch.randn(n, generator=g, dtype=torch.float64))

    def forward(self) -> torch.Tensor:
        return 0.5 * self.theta @ self.A @ self.theta - self.b @ self.theta


def quadratic_loss(model: Quadratic, batch) -> torch.Tensor:
    return model()


def exact_line_search(model: Quadratic) -> float:
    with torch.no_grad():
        g = model.A @ model.theta - model.b
        return float(g @ g / (g @ model.A @ g))


def classification_loss(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


def mse_loss(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return 0.5 * ((model(x).squeeze(-1) - y) ** 2).mean()


def mlp(dtype=torch.float64, act=nn.Tanh, dropout: float = 0.0, bn: bool = False) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Linear(8, 16)]
    if bn:
        layers.append(nn.BatchNorm1d(16))
    layers += [act(), nn.Dropout(dropout), nn.Linear(16, 16), act(), nn.Linear(16, 3)]
    return nn.Sequential(*layers).to(dtype)


def cnn(dtype=torch.float64, act=nn.Tanh, pool=nn.AvgPool2d, bn: bool = False) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Conv2d(1, 4, 3, padding=1)]
    if bn:
        layers.append(nn.BatchNorm2d(4))
    layers += [act(), pool(2), nn.Conv2d(4, 6, 3, padding=1), act(), pool(2), nn.Flatten(),
               nn.Linear(6 * 4, 10), act(), nn.Linear(10, 3)]
    return nn.Sequential(*layers).to(dtype)


def mlp_batch(n: int = 32, dtype=torch.float64, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 8, generator=g).to(dtype), torch.randint(0, 3, (n,), generator=g)


def cnn_batch(n: int = 16, dtype=torch.float64, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g).to(dtype), torch.randint(0, 3, (n,), generator=g)


def central_second_difference(model, loss_fn, batch, d, eps: float = 1e-4) -> float:
    """``(phi(eps) - 2 phi(0) + phi(-eps)) / eps^2`` along ``theta + s*d`` (float64)."""
    params = [p for p in model.parameters()]
    with torch.no_grad():
        def at(s):
            for p, v in zip(params, d):
                p.add_(v, alpha=s)
            value = float(loss_fn(model, batch))
            for p, v in zip(params, d):
                p.sub_(v, alpha=s)
            return value
        return (at(eps) - 2 * at(0.0) + at(-eps)) / eps**2
