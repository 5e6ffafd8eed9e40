"""Hypergradient descent on the learning rate.

Baydin, Cornish, Martínez Rubio, Schmidt & Wood, "Online Learning Rate Adaptation with
Hypergradient Descent", ICLR 2018. The update ``theta_t = theta_{t-1} + u_{t-1}`` depends
on the learning rate, so the loss at the new point has a derivative with respect to it::

    h_t = d f(theta_t) / d alpha = grad f(theta_t) . d u_{t-1} / d alpha
    alpha_t = alpha_{t-1} - beta * h_t                 (additive rule)

SGD-HD: ``u = -alpha g`` so ``alpha_t = alpha_{t-1} + beta g_t . g_{t-1}``.
Adam-HD: ``u = -alpha m_hat / (sqrt(v_hat) + eps)`` so
``alpha_t = alpha_{t-1} + beta g_t . m_hat_{t-1} / (sqrt(v_hat_{t-1}) + eps)``.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Optional

import torch

from genlr.methods.base import LRMethod
from genlr.options import SettingError

# The paper's hyper-learning rates (its experiments): SGD-HD / SGDN-HD and Adam-HD.
PAPER_BETA_SGD = 1e-3
PAPER_BETA_ADAPTIVE = 1e-7
# The multiplicative rule moves by a cosine in [-1, 1]: a scale-free, small default of ours.
DEFAULT_BETA_MULTIPLICATIVE = 0.02


class Hypergradient(LRMethod):
    """Hypergradient descent (HD) for any optimizer whose step is linear in ``lr``.

    Generic form: with ``d_{t-1}`` the previous step (``theta_before - theta_after``) and
    ``alpha_{t-1}`` its learning rate, ``d u_{t-1} / d alpha = -d_{t-1} / alpha_{t-1}``
    exactly (the step is linear in ``lr``, AdamW's decoupled decay included), so

    * additive (the paper's rule): ``alpha_t = alpha_{t-1} + beta <g_t, d_{t-1}/alpha_{t-1}>``
    * multiplicative (the paper's variant):
      ``alpha_t = alpha_{t-1} (1 + beta cos(g_t, d_{t-1}))``

    which is SGD-HD for SGD, SGDN-HD for SGD with Nesterov momentum and Adam-HD for Adam.

    Contract (on top of :class:`LRMethod`'s):

    * ``step(batch, loss=loss)`` reads only ``.grad``: no extra passes. As in the paper,
      the learning rate is updated *before* this step's update is applied, with the
      gradient at the current point and the previous step's direction; the first step
      uses the initial ``lr``.
    * The optimizer must be linear in ``lr`` (``check_linear_in_lr``); its state advances
      exactly once per step. One parameter-sized buffer (the previous direction per unit
      ``lr``) is kept and saved in ``state_dict``.
    * ``alpha`` is clamped to ``[lr_min, lr_max]``: the paper does not clamp, but a
      negative learning rate ascends. At ``alpha = 0`` the direction is still measured
      (at the last positive ``alpha``), so the method can recover.

    **Parameter groups** share one scale: ``alpha`` is group 0's lr and every other group
    keeps its initial ratio to it; the hypergradient is taken with respect to that scale.

    Args (options):
        beta: the hyper-learning rate. ``None``: the paper's values for the additive rule,
            1e-3 for SGD and 1e-7 for adaptive optimizers (Adam, AdamW, RMSprop, ...);
            0.02 (our choice) for the multiplicative rule.
        rule: ``"additive"`` or ``"multiplicative"``.
        lr_min, lr_max: the clamp of ``alpha`` (``lr_max=None``: no upper bound).

    Diagnostics: ``hypergradient`` (``h_t = -<g_t, d_{t-1}>/alpha_{t-1}``), ``cosine``
    (between ``g_t`` and ``d_{t-1}``), ``skipped`` (AMP found inf/NaN gradients).
    """

    rescales_step = True

    def __init__(self, optimizer, model=None, loss_fn=None, *, beta: Optional[float] = None,
                 rule: Literal["additive", "multiplicative"] = "additive", lr_min: float = 0.0,
                 lr_max: Optional[float] = None, **common) -> None:
        self.check_options(locals())
        if beta is None:
            if rule == "multiplicative":
                beta = DEFAULT_BETA_MULTIPLICATIVE
            else:
                beta = PAPER_BETA_SGD if isinstance(optimizer, torch.optim.SGD) else PAPER_BETA_ADAPTIVE
        if not beta >= 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        if rule == "multiplicative" and not beta < 1:
            raise ValueError(f"beta must be < 1 for the multiplicative rule, got {beta}")
        if not lr_min >= 0:
            raise ValueError(f"lr_min must be >= 0, got {lr_min}")
        if lr_max is not None and not lr_max > lr_min:
            raise ValueError(f"lr_max must exceed lr_min ({lr_min}), got {lr_max}")
        super().__init__(optimizer, model, loss_fn, **common)
        lr0 = float(optimizer.param_groups[0]["lr"])
        if not lr0 > 0:
            raise SettingError(f"lr=hypergradient needs a positive initial lr, got {lr0}")
        self.beta, self.rule, self.lr_min, self.lr_max = float(beta), rule, lr_min, lr_max
        self.ratios = [float(g["lr"]) / lr0 for g in optimizer.param_groups]
        self.alpha = lr0
        self.last_positive_alpha = lr0
        # previous step per unit alpha, keyed by the parameter's index in param_groups
        self.unit_direction: dict[int, torch.Tensor] = {}
        self._index = {id(p): i for i, p in enumerate(self._all_params())}

    def _all_params(self) -> list[torch.Tensor]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def _set_group_lrs(self, lr: float) -> None:
        for group, ratio in zip(self.optimizer.param_groups, self.ratios):
            group["lr"] = lr * ratio

    @torch.no_grad()
    def _dots(self, params: list[torch.Tensor]) -> tuple[float, float, float]:
        """``<g, d_hat>``, ``|g|^2`` and ``|d_hat|^2`` over parameters with both."""
        dot = g2 = d2 = 0.0
        pairs = [(p.grad, self.unit_direction[self._index[id(p)]]) for p in params
                 if self._index.get(id(p)) in self.unit_direction]
        if pairs:
            grads, dirs = zip(*pairs)
            dot = float(sum((g * x).sum() for g, x in pairs))
            g2 = float(sum(n.square() for n in torch._foreach_norm(list(grads))))
            d2 = float(sum(n.square() for n in torch._foreach_norm(list(dirs))))
        return dot, g2, d2

    def step(self, batch: Any = None, loss: torch.Tensor | None = None,
             probe_batch: Any = None) -> float:
        self.step_count += 1
        self.unscale_grads()  # the hypergradient reads .grad before the optimizer does
        params = self.params()
        diagnostics = {"skipped": 0.0}
        if self.unit_direction:
            dot, g2, d2 = self._dots(params)
            cosine = dot / math.sqrt(g2 * d2) if g2 > 0 and d2 > 0 else 0.0
            if math.isfinite(dot) and math.isfinite(cosine):
                if self.rule == "additive":
                    alpha = self.alpha + self.beta * dot
                else:
                    alpha = self.alpha * (1 + self.beta * cosine)
                self.alpha = max(alpha, self.lr_min)
                if self.lr_max is not None:
                    self.alpha = min(self.alpha, self.lr_max)
            diagnostics.update(hypergradient=-dot, cosine=cosine)
        if self.alpha > 0:
            self.last_positive_alpha = self.alpha
        # Measure the direction at a positive lr even when alpha sits at 0 (linear in lr).
        ref = self.alpha if self.alpha > 0 else self.last_positive_alpha
        self._set_group_lrs(ref)
        captured = self.capture_direction()
        if captured is None:  # skipped step: nothing moved, keep the previous direction
            self._set_group_lrs(self.alpha)
            self.diagnostics = {**diagnostics, "skipped": 1.0}
            return self.last_lr
        params, d = captured
        torch._foreach_div_(d, ref)
        self.unit_direction = {self._index[id(p)]: x for p, x in zip(params, d)}
        if ref != self.alpha:
            self.place(params, d, self.alpha, current=ref)  # d is per unit lr now
        self.diagnostics = diagnostics
        return self.last_lr

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "alpha": self.alpha, "ratios": self.ratios,
                "last_positive_alpha": self.last_positive_alpha,
                "unit_direction": dict(self.unit_direction)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.alpha = state["alpha"]
        self.ratios = list(state["ratios"])
        self.last_positive_alpha = state["last_positive_alpha"]
        params = self._all_params()
        self.unit_direction = {int(i): x.to(params[int(i)].device)
                               for i, x in state["unit_direction"].items()}
        self._set_group_lrs(self.alpha)
