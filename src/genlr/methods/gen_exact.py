"""Exact GeN: the learning rate from the exact second directional derivative.

Bu & Xu, "Gradient descent with generalized Newton's method", ICLR 2025
(arXiv:2407.02772). With ``d`` the base optimizer's step at the current learning rate and
``phi(s) = L(theta - s*d)``, the second-order Taylor model of ``phi`` is minimised at

    s* = -phi'(0) / phi''(0) = <g, d> / (d^T H d),

the line-search step in units of the current learning rate; ``alpha* = s* lr``. Which lr
follows from it is the rule's business (``genlr.methods.gen_base``). ``d^T H d`` is computed
exactly (``genlr.curvature.directional``).
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from genlr.methods.base import finite
from genlr.curvature import DirectionalDerivatives, batch_fraction
from genlr.methods.gen_base import GeNBase



class ExactGeN(GeNBase):
    """GeN with the exact curvature ``d^T H d`` (Bu & Xu, ICLR 2025).

    On a probe step, ``<g, d>`` and ``d^T H d`` are computed at the pre-step parameters on
    the probe batch (or its first ``curvature_batch`` fraction), by one Taylor-mode pass or
    another exact path (``genlr.curvature.directional``), counted in ``passes["hvp"]``; with
    ``probe="same"`` the slope comes free from ``.grad``. The probe step and the rules are
    ``GeNBase``'s; the contract ``LRMethod``'s.

    Diagnostics (``method/*``): ``alpha_star``/``s_star`` (this probe's line search, as an
    lr and in units of the current lr), ``slope`` (``<g, d>``), ``curvature``
    (``d^T H d``), ``window_alpha``/``window_error`` (the band's line search over its window
    and its standard error), ``factor``, ``accepted``/``fallback``, ``probed``,
    ``skipped``, ``curvature_path_<path>`` (1 for the path that gave the curvature:
    taylor, double_backward, forward_over_reverse, none), ``check_error`` (the Taylor pass's disagreement with the reference at its last
    check). Line profile: the real loss along ``d`` against
    ``phi(0) - <g,d> s + d^T H d s^2 / 2``.

    Options (besides ``GeNBase``'s):
        curvature: "auto" (the Taylor pass, checked against an exact reference on its first
            use; a path that can't work for the model hands over to the next: double
            backward, forward-over-reverse, and last the fallback), or one of "taylor",
            "double_backward", "forward_over_reverse" alone (its errors raise).
        curvature_batch: fraction of the batch the curvature is computed on (``None``: all).
        check_every: besides its first use, check the Taylor pass every this many probes
            (0: the first only).
    """

    READ_WHEN = {**GeNBase.READ_WHEN,
                 "check_every": ("with curvature='auto'", lambda o: o["curvature"] == "auto")}

    def __init__(self, optimizer, model=None, loss_fn=None, *,
                 curvature: Literal["auto", "taylor", "double_backward",
                                    "forward_over_reverse"] = "auto",
                 curvature_batch: Optional[float] = None, check_every: int = 0,
                 **shared) -> None:
        self.check_options({**shared, **locals()})
        super().__init__(optimizer, model, loss_fn, **shared)
        if curvature_batch is not None and not 0.0 < curvature_batch <= 1.0:
            raise ValueError(f"curvature_batch must be in (0, 1] or None, got {curvature_batch}")
        if check_every < 0:
            raise ValueError(f"check_every must be >= 0, got {check_every}")
        self.curvature_mode, self.curvature_batch = curvature, curvature_batch
        self.derivatives = DirectionalDerivatives(model, loss_fn, self.autocast, check_every,
                                                  self.probes_left if self.total_steps else None)

    def estimate(self, params, d, batch, same, loss):
        self.shift(params, d, 0.0, current=1.0)  # back to theta: the derivatives are taken there
        try:
            slope, curvature = self.derivatives.derivatives(
                params, d, batch_fraction(batch, self.curvature_batch), self.curvature_mode)
        finally:
            self.shift(params, d, 1.0, current=0.0)
        self.passes["hvp"] += 1
        # On the training batch the exact full-batch slope is free; elsewhere the jet's is used.
        slope = self.grad_dot(d, params) if same else self.batch_mean(slope)
        curvature = self.batch_mean(curvature)
        # the path by name: one tag per path, 1 where it gave this probe's curvature
        diag = {"slope": slope, "curvature": curvature,
                f"curvature_path_{self.derivatives.path}": 1.0,
                "check_error": self.derivatives.check_error}
        s_star = slope / curvature if finite(slope, curvature) and curvature > 0 else None
        return s_star, diag, lambda s: -slope * s + 0.5 * curvature * s * s

    def summary_fields(self) -> dict[str, Any]:
        return {**super().summary_fields(), "curvature_paths": dict(self.derivatives.counts),
                "curvature_unavailable": dict(self.derivatives.unavailable)}

    def lr_account(self) -> dict[str, Any]:
        return {**super().lr_account(), "curvature_path": self.derivatives.path}

    def account_line(self) -> str:
        return f"{super().account_line()}; d^T H d by {self.derivatives.path}"
