"""The stochastic Polyak step size, SPS_max.

Loizou, Vaswani, Laradji & Lacoste-Julien, "Stochastic Polyak Step-size for SGD: An
Adaptive Learning Rate for Fast Convergence", AISTATS 2021. For SGD on the mini-batch
loss ``f_i`` with gradient ``g``::

    gamma_t = min( (f_i(x_t) - f_i^*) / (c * ||g||^2),  gamma_b )
    x_{t+1} = x_t - gamma_t * g
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch

from genlr.methods.base import LRMethod
from genlr.options import SettingError


class Polyak(LRMethod):
    """SPS_max: the step that would bring the linearised mini-batch loss down to ``f_star``.

    Contract (on top of :class:`LRMethod`'s):

    * ``step(batch, loss=loss)`` needs the (unscaled) mini-batch training loss; without it
      a ``ValueError`` is raised. ``batch`` is not used: no extra forward or backward pass.
    * The optimizer must be linear in ``lr`` (``check_linear_in_lr``); its state advances
      exactly once per step.

    **Other optimizers than plain SGD.** With ``d_hat`` the optimizer's step per unit
    learning rate (its direction, measured by ``capture_direction``), the step is

        ``gamma = min((f - f_star) / (c * <g, d_hat>), lr_max)``

    i.e. the step along the optimizer's own direction at which the first-order model of
    the loss reaches ``f_star``, slackened by ``c``. For SGD without momentum
    ``d_hat = g`` and this is exactly SPS_max; for Adam and friends ``<g, d_hat>`` is the
    preconditioned squared gradient norm ``g^T P g``, as in the preconditioned Polyak
    steps of the later literature. When ``<g, d_hat> <= eps`` (a flat gradient, or
    momentum pointing uphill) the ratio is unbounded and SPS_max's cap ``lr_max`` is used
    (``method/fallback`` = 1). ``f < f_star`` gives ``gamma = 0`` (no step).

    **Parameter groups** share one scale: group 0 gets ``gamma`` and every other group
    keeps its initial ratio to group 0 (the direction is measured with those ratios).

    Args (options):
        c: the slack of SPS (the paper's theory uses 0.5; it reports 0.2 for deep nets).
        f_star: the lower bound ``f_i^*`` of the mini-batch loss (0 for interpolating
            models with non-negative losses, the paper's setting).
        lr_max: the cap ``gamma_b``; ``None`` takes the optimizer's initial ``lr``.
        growth: if set, also cap ``gamma_t <= growth * gamma_{t-1}`` (smooths the sudden
            jumps of the raw Polyak ratio); ``None`` is the paper's SPS_max.
        eps: the smallest ``<g, d_hat>`` trusted as a denominator.

    Diagnostics: ``polyak_step`` (the uncapped ratio; inf on fallback), ``loss_gap``
    (``f - f_star``), ``grad_dot_dir`` (``<g, d_hat>``), ``capped``, ``fallback``,
    ``skipped`` (AMP found inf/NaN gradients).
    """

    rescales_step = True

    def __init__(self, optimizer, model=None, loss_fn=None, *, c: float = 0.5,
                 f_star: float = 0.0, lr_max: Optional[float] = None,
                 growth: Optional[float] = None, eps: float = 1e-12, **common) -> None:
        if not c > 0:
            raise ValueError(f"c must be positive, got {c}")
        if lr_max is not None and not lr_max > 0:
            raise ValueError(f"lr_max must be positive, got {lr_max}")
        if growth is not None and not growth >= 1:
            raise ValueError(f"growth must be >= 1 (or None), got {growth}")
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        super().__init__(optimizer, model, loss_fn, **common)
        lr0 = float(optimizer.param_groups[0]["lr"])
        if not lr0 > 0:
            raise SettingError(f"lr=polyak needs a positive optimizer lr to set group ratios, got {lr0}")
        self.c, self.f_star, self.growth, self.eps = c, f_star, growth, eps
        self.lr_max = float(lr_max) if lr_max is not None else lr0
        # Fixed group ratios: the lr of a group may reach 0, so ratios cannot be re-read.
        self.ratios = [float(g["lr"]) / lr0 for g in optimizer.param_groups]
        self.last_gamma = self.lr_max

    def _set_group_lrs(self, lr: float) -> None:
        for group, ratio in zip(self.optimizer.param_groups, self.ratios):
            group["lr"] = lr * ratio

    def step(self, batch: Any = None, loss: torch.Tensor | float | None = None,
             probe_batch: Any = None) -> float:
        if loss is None:
            raise SettingError("lr=polyak needs the training loss: call step(batch, loss=loss)")
        f = self.batch_mean(loss.detach() if isinstance(loss, torch.Tensor) else loss)
        self.step_count += 1
        # Measure the direction at the (positive) cap, never at a previous gamma that may
        # be 0; linearity in lr makes the measuring lr irrelevant.
        ref = self.lr_max
        self._set_group_lrs(ref)
        captured = self.capture_direction()
        if captured is None:
            self._set_group_lrs(self.last_gamma)
            self.diagnostics = {"skipped": 1.0}
            return self.last_lr
        params, d = captured
        slope = self.grad_dot(d) / ref  # <g, d_hat>, d_hat = step per unit lr
        gap = f - self.f_star
        cap = self.lr_max
        if self.growth is not None and self.last_gamma > 0:
            cap = min(cap, self.growth * self.last_gamma)
        fallback = not (slope > self.eps) or not math.isfinite(slope)
        raw = math.inf if fallback else gap / (self.c * slope)
        gamma = cap if fallback else min(max(raw, 0.0), cap)
        if not math.isfinite(f):
            gamma = 0.0  # a NaN loss must not move the weights; the engine flags divergence
        self.place(params, d, gamma / ref)
        if gamma > 0:
            self.last_gamma = gamma
        self.diagnostics = {
            "polyak_step": raw, "loss_gap": gap, "grad_dot_dir": slope,
            "capped": float(not fallback and raw > cap), "fallback": float(fallback),
            "skipped": 0.0,
        }
        return self.last_lr

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "last_gamma": self.last_gamma, "ratios": self.ratios,
                "lr_max": self.lr_max}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.last_gamma = state["last_gamma"]
        self.ratios = list(state["ratios"])
        self.lr_max = state["lr_max"]
