"""Exact directional derivatives of the training loss along an update direction.

With ``phi(s) = L(theta - s*d)`` the GeN step needs ``phi'(0) = -<g, d>`` and
``phi''(0) = d^T H d``. On the training batch ``<g, d>`` is free (the gradient is already in
``.grad``); on another batch it comes with the curvature. This module computes both
exactly -- no finite differences -- in several ways, so that the benchmark
(``benchmarks/bench_methods.py``) can measure them against each other:

``taylor``
    Second-order Taylor-mode forward propagation (a "jet") of ``theta + s*d`` through the
    loss, from a traced graph of the loss (``genlr.methods.taylor``): each value carries its
    first and second derivative in ``s``; no backward pass and no tape. Because the path is
    linear in ``s``, a matrix product needs five products instead of the nine of nested
    forward mode, and the primal and tangent streams go through one batched call. Falls back
    to ``double_backward`` on an operation it has no rule for.
``double_backward``
    Reverse over reverse: ``g = grad(L)`` with a graph, then ``Hd = grad(<g, d>)``.
``forward_over_reverse``
    ``torch.func.jvp`` of ``torch.func.grad``.
``forward_forward``
    Nested ``torch.func.jvp`` (``phi''`` directly, no Hessian-vector product). Wrong for
    models with BatchNorm in training mode in torch 2.x (its second-order forward-mode
    formula disagrees with central differences; the other three agree): measured only.

All of them evaluate the loss under ``probe_mode`` (BatchNorm normalises with the batch
statistics and writes no buffer, dropout off, RNG untouched) and the training autocast.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable

import torch
from torch import nn

from genlr.methods.base import LossFn, dot, probe_mode

CURVATURE_MODES = ("auto", "taylor", "double_backward", "forward_over_reverse", "forward_forward")


def batch_fraction(batch: Any, fraction: float | None) -> Any:
    """The first ``ceil(fraction * n)`` examples of every tensor in ``batch`` that has a
    leading batch dimension ``n`` (tuples, lists and dicts are walked). ``None`` or ``1``
    returns ``batch`` itself."""
    if fraction is None or fraction >= 1.0:
        return batch
    if not 0.0 < fraction:
        raise ValueError(f"a batch fraction must be in (0, 1], got {fraction}")
    sizes: list[int] = []

    def collect(b: Any) -> None:
        if isinstance(b, torch.Tensor) and b.dim() > 0:
            sizes.append(b.shape[0])
        elif isinstance(b, (list, tuple)):
            for x in b:
                collect(x)
        elif isinstance(b, dict):
            for x in b.values():
                collect(x)

    collect(batch)
    if not sizes:
        return batch
    n = max(sizes)
    keep = max(1, math.ceil(fraction * n))

    def cut(b: Any) -> Any:
        if isinstance(b, torch.Tensor) and b.dim() > 0 and b.shape[0] == n:
            return b[:keep]
        if isinstance(b, tuple):
            return type(b)(*[cut(x) for x in b]) if hasattr(b, "_fields") else tuple(cut(x) for x in b)
        if isinstance(b, list):
            return [cut(x) for x in b]
        if isinstance(b, dict):
            return {k: cut(x) for k, x in b.items()}
        return b

    return cut(batch)


class _BoundLoss(nn.Module):
    """``loss_fn(model, batch)`` as a module, so that ``torch.func.functional_call`` can swap
    the model's parameters for the duration of a loss evaluation."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Any) -> torch.Tensor:
        return self.loss_fn(self.model, batch)


class DirectionalDerivatives:
    """``<grad L, d>`` and ``d^T H d`` of ``loss_fn(model, batch)`` at the current parameters.

    Args:
        model, loss_fn: the training model and loss (``loss_fn(model, batch) -> scalar``).
        autocast: zero-argument factory of the training autocast context.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn,
                 autocast: Callable[[], contextlib.AbstractContextManager] | None = None) -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.autocast = autocast or contextlib.nullcontext
        self._bound = _BoundLoss(model, loss_fn)
        self._taylor_failed: str | None = None
        self.last_mode: str = ""

    # ----------------------------------------------------------------------- dispatch
    def derivatives(self, params: list[torch.Tensor], d: list[torch.Tensor], batch: Any,
                    mode: str = "auto") -> tuple[float, float]:
        """``(<grad L, d>, d^T H d)`` at the current parameters on ``batch``: the first and
        second derivative of ``L(theta + s*d)`` at 0 (floats; may be non-finite)."""
        if mode not in CURVATURE_MODES:
            raise ValueError(f"curvature mode must be one of {CURVATURE_MODES}, got {mode!r}")
        if mode in ("auto", "taylor"):
            value = self._try_taylor(params, d, batch, strict=mode == "taylor")
            if value is not None:
                self.last_mode = "taylor"
                return value
            mode = "double_backward"
        self.last_mode = mode
        return getattr(self, mode)(params, d, batch)

    def curvature(self, params: list[torch.Tensor], d: list[torch.Tensor], batch: Any,
                  mode: str = "auto") -> float:
        """``d^T H d`` at the current parameters (float; may be non-finite or negative)."""
        return self.derivatives(params, d, batch, mode)[1]

    def _try_taylor(self, params, d, batch, strict: bool) -> tuple[float, float] | None:
        if self._taylor_failed is not None and not strict:
            return None
        from genlr.methods.taylor import TaylorUnsupported, directional_derivatives

        try:
            named = self._named(params)
            with probe_mode(self.model), self.autocast():
                return directional_derivatives(self._bound, named, d, batch)
        except (TaylorUnsupported, ValueError) as err:
            if strict:
                raise
            self._taylor_failed = str(err)
            return None

    # ------------------------------------------------------------------------ modes
    def double_backward(self, params, d, batch) -> tuple[float, float]:
        with torch.enable_grad():
            with probe_mode(self.model), self.autocast():
                loss = self.loss_fn(self.model, batch)
            grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
            pairs = [(g, v) for g, v in zip(grads, d) if g is not None]
            gd = sum((g * v.to(g.dtype)).sum() for g, v in pairs)
            if not isinstance(gd, torch.Tensor) or not gd.requires_grad:
                return float(gd), 0.0
            hd = torch.autograd.grad(gd, params, allow_unused=True)
        used = [(h, v) for h, v in zip(hd, d) if h is not None]
        return float(gd.detach()), dot([h for h, _ in used], [v for _, v in used])

    def forward_over_reverse(self, params, d, batch) -> tuple[float, float]:
        names, fixed = self._named(params)
        primals = tuple(p.detach() for p in params)

        def loss_of(*ps):
            return self._call(names, fixed, ps, batch)

        grad_fn = torch.func.grad(loss_of, argnums=tuple(range(len(params))))
        with probe_mode(self.model):
            g, hd = torch.func.jvp(grad_fn, primals, tuple(d))
        return dot(list(g), d), dot(list(hd), d)

    def forward_forward(self, params, d, batch) -> tuple[float, float]:
        names, fixed = self._named(params)
        primals, tangents = tuple(p.detach() for p in params), tuple(d)

        def loss_of(*ps):
            return self._call(names, fixed, ps, batch)

        def slope_of(*ps):
            return torch.func.jvp(loss_of, ps, tangents)[1]

        with probe_mode(self.model):
            slope, second = torch.func.jvp(slope_of, primals, tangents)
        return float(slope), float(second)

    # ---------------------------------------------------------------------- helpers
    def _named(self, params: list[torch.Tensor]) -> tuple[list[str], dict[str, torch.Tensor]]:
        """Names (in ``_BoundLoss``) of ``params``, and every other parameter and buffer."""
        by_id = {id(p): f"model.{n}" for n, p in self.model.named_parameters()}
        missing = [i for i, p in enumerate(params) if id(p) not in by_id]
        if missing:
            raise ValueError("the optimizer holds parameters that are not the model's; "
                             "use curvature='double_backward'")
        names = [by_id[id(p)] for p in params]
        chosen = set(names)
        fixed = {f"model.{n}": t.detach() for n, t in self.model.named_parameters()
                 if f"model.{n}" not in chosen}
        return names, fixed

    def _call(self, names, fixed, ps, batch) -> torch.Tensor:
        with self.autocast():
            return torch.func.functional_call(self._bound, {**fixed, **dict(zip(names, ps))},
                                              (batch,), strict=False)
