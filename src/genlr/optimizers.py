"""Base optimizers and their registry: ``optimizer=<name>`` on the command line.

Each builder takes the parameters (or parameter groups) and keyword-only options, whose
defaults are the project's defaults (see ``genlr.options``).
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch

Params = Iterable[torch.Tensor] | Iterable[dict]


def _check(betas: tuple[float, ...] = (), **nonnegative: float) -> None:
    """One-line errors that name the option (torch's own checks say "learning rate")."""
    for name, value in nonnegative.items():
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if any(not 0.0 <= beta < 1.0 for beta in betas):
        raise ValueError(f"betas must be in [0, 1), got {list(betas)}")


def sgd(params: Params, *, lr: float = 0.1, momentum: float = 0.9, nesterov: bool = False,
        weight_decay: float = 0.0, dampening: float = 0.0) -> torch.optim.SGD:
    _check(lr=lr, momentum=momentum, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov,
                           weight_decay=weight_decay, dampening=dampening)


def adam(params: Params, *, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
         eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False) -> torch.optim.Adam:
    _check(betas, lr=lr, eps=eps, weight_decay=weight_decay)
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), eps=eps,
                            weight_decay=weight_decay, amsgrad=amsgrad)


def adamw(params: Params, *, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
          eps: float = 1e-8, weight_decay: float = 0.01, amsgrad: bool = False) -> torch.optim.AdamW:
    _check(betas, lr=lr, eps=eps, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), eps=eps,
                             weight_decay=weight_decay, amsgrad=amsgrad)


def rmsprop(params: Params, *, lr: float = 1e-3, alpha: float = 0.99, eps: float = 1e-8,
            momentum: float = 0.0, centered: bool = False,
            weight_decay: float = 0.0) -> torch.optim.RMSprop:
    _check(lr=lr, alpha=alpha, eps=eps, momentum=momentum, weight_decay=weight_decay)
    return torch.optim.RMSprop(params, lr=lr, alpha=alpha, eps=eps, momentum=momentum,
                               centered=centered, weight_decay=weight_decay)


def adagrad(params: Params, *, lr: float = 1e-2, lr_decay: float = 0.0, eps: float = 1e-10,
            weight_decay: float = 0.0,
            initial_accumulator_value: float = 0.0) -> torch.optim.Adagrad:
    _check(lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
           initial_accumulator_value=initial_accumulator_value)
    return torch.optim.Adagrad(params, lr=lr, lr_decay=lr_decay, eps=eps,
                               weight_decay=weight_decay,
                               initial_accumulator_value=initial_accumulator_value)


# ------------------------------------------------------------------ learning-rate-free peers
# Through their real packages, imported lazily so that genlr imports without them. Defaults
# are the packages' own; the engine drives their extra contracts through genlr.peers.

def _require(module: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"this optimizer needs {package}: pip install {package}") from None


def prodigy(params: Params, *, lr: float = 1.0, betas: tuple[float, float] = (0.9, 0.999),
            beta3: float | None = None, eps: float = 1e-8, weight_decay: float = 0.0,
            decouple: bool = True, use_bias_correction: bool = False,
            safeguard_warmup: bool = False, d0: float = 1e-6, d_coef: float = 1.0,
            growth_rate: float | None = None, slice_p: int = 1) -> torch.optim.Optimizer:
    """Prodigy (Mishchenko & Defazio, 2024), ``prodigyopt.Prodigy``; step size ``d * lr``.

    ``growth_rate=None`` is Prodigy's unbounded default (``inf``, which YAML spells badly).
    """
    Prodigy = _require("prodigyopt", "prodigyopt").Prodigy
    return Prodigy(params, lr=lr, betas=tuple(betas), beta3=beta3, eps=eps,
                   weight_decay=weight_decay, decouple=decouple,
                   use_bias_correction=use_bias_correction, safeguard_warmup=safeguard_warmup,
                   d0=d0, d_coef=d_coef,
                   growth_rate=float("inf") if growth_rate is None else growth_rate,
                   slice_p=slice_p)


def schedulefree_adamw(params: Params, *, lr: float = 0.0025,
                       betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                       weight_decay: float = 0.0, warmup_steps: int = 0, r: float = 0.0,
                       weight_lr_power: float = 2.0) -> torch.optim.Optimizer:
    """Schedule-Free AdamW (Defazio et al., 2024), ``schedulefree.AdamWScheduleFree``.

    Needs ``train()``/``eval()`` around evaluation and checkpoints (``genlr.peers``).
    """
    sf = _require("schedulefree", "schedulefree")
    return sf.AdamWScheduleFree(params, lr=lr, betas=tuple(betas), eps=eps,
                                weight_decay=weight_decay, warmup_steps=warmup_steps, r=r,
                                weight_lr_power=weight_lr_power)


def schedulefree_sgd(params: Params, *, lr: float = 1.0, momentum: float = 0.9,
                     weight_decay: float = 0.0, warmup_steps: int = 0, r: float = 0.0,
                     weight_lr_power: float = 2.0) -> torch.optim.Optimizer:
    """Schedule-Free SGD (Defazio et al., 2024), ``schedulefree.SGDScheduleFree``.

    Needs ``train()``/``eval()`` around evaluation and checkpoints (``genlr.peers``).
    """
    sf = _require("schedulefree", "schedulefree")
    return sf.SGDScheduleFree(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                              warmup_steps=warmup_steps, r=r, weight_lr_power=weight_lr_power)


def _dog(cls_name: str, params: Params, reps_rel: float, lr: float, weight_decay: float,
         eps: float, init_eta: float | None, averager_gamma: float) -> torch.optim.Optimizer:
    if averager_gamma < 0:
        raise ValueError(f"averager_gamma must be >= 0, got {averager_gamma}")
    cls = getattr(_require("dog", "dog-optimizer"), cls_name)
    optimizer = cls(params, reps_rel=reps_rel, lr=lr, weight_decay=weight_decay, eps=eps,
                    init_eta=init_eta)
    # read by genlr.peers.DoGHooks, which owns the weight average DoG is evaluated on
    optimizer.averager_gamma = averager_gamma
    return optimizer


def dog(params: Params, *, reps_rel: float = 1e-6, lr: float = 1.0, weight_decay: float = 0.0,
        eps: float = 1e-8, init_eta: float | None = None,
        averager_gamma: float = 8.0) -> torch.optim.Optimizer:
    """DoG (Ivgi, Hinder & Carmon, 2023), ``dog.DoG``: one step size for all parameters.

    Evaluated on its polynomial-decay weight average (``averager_gamma``, the package's
    default 8), as its authors require. They suggest ``reps_rel=1e-4`` with BatchNorm.
    """
    return _dog("DoG", params, reps_rel, lr, weight_decay, eps, init_eta, averager_gamma)


def ldog(params: Params, *, reps_rel: float = 1e-6, lr: float = 1.0, weight_decay: float = 0.0,
         eps: float = 1e-8, init_eta: float | None = None,
         averager_gamma: float = 8.0) -> torch.optim.Optimizer:
    """Layer-wise DoG (Ivgi, Hinder & Carmon, 2023), ``dog.LDoG``: one step size per tensor.

    Evaluated on its polynomial-decay weight average, as for ``dog``.
    """
    return _dog("LDoG", params, reps_rel, lr, weight_decay, eps, init_eta, averager_gamma)


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": sgd,
    "adam": adam,
    "adamw": adamw,
    "rmsprop": rmsprop,
    "adagrad": adagrad,
    # learning-rate-free peers (genlr.peers drives their train/eval and averaging)
    "prodigy": prodigy,
    "schedulefree_adamw": schedulefree_adamw,
    "schedulefree_sgd": schedulefree_sgd,
    "dog": dog,
    "ldog": ldog,
}


def build_optimizer(name: str, params: Params, **options) -> torch.optim.Optimizer:
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](params, **options)
