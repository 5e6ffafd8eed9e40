"""Base optimizers and their registry: ``optimizer=<name>`` on the command line.

Each builder takes the parameters (or parameter groups) and keyword-only options, whose
defaults are the project's defaults (see ``genlr.options``).
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch

Params = Iterable[torch.Tensor] | Iterable[dict]


def sgd(params: Params, *, lr: float = 0.1, momentum: float = 0.9, nesterov: bool = False,
        weight_decay: float = 0.0, dampening: float = 0.0) -> torch.optim.SGD:
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov,
                           weight_decay=weight_decay, dampening=dampening)


def adam(params: Params, *, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
         eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), eps=eps,
                            weight_decay=weight_decay, amsgrad=amsgrad)


def adamw(params: Params, *, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
          eps: float = 1e-8, weight_decay: float = 0.01, amsgrad: bool = False) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), eps=eps,
                             weight_decay=weight_decay, amsgrad=amsgrad)


def rmsprop(params: Params, *, lr: float = 1e-3, alpha: float = 0.99, eps: float = 1e-8,
            momentum: float = 0.0, centered: bool = False,
            weight_decay: float = 0.0) -> torch.optim.RMSprop:
    return torch.optim.RMSprop(params, lr=lr, alpha=alpha, eps=eps, momentum=momentum,
                               centered=centered, weight_decay=weight_decay)


def adagrad(params: Params, *, lr: float = 1e-2, lr_decay: float = 0.0, eps: float = 1e-10,
            weight_decay: float = 0.0,
            initial_accumulator_value: float = 0.0) -> torch.optim.Adagrad:
    return torch.optim.Adagrad(params, lr=lr, lr_decay=lr_decay, eps=eps,
                               weight_decay=weight_decay,
                               initial_accumulator_value=initial_accumulator_value)


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": sgd,
    "adam": adam,
    "adamw": adamw,
    "rmsprop": rmsprop,
    "adagrad": adagrad,
}


def build_optimizer(name: str, params: Params, **options) -> torch.optim.Optimizer:
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](params, **options)
