"""Exact GeN: the learning rate from the exact second directional derivative.

Bu & Xu, "Gradient descent with generalized Newton's method", ICLR 2025
(arXiv:2407.02772). With ``d`` the base optimizer's step at the current learning rate and
``phi(s) = L(theta - s*d)``, the second-order Taylor model of ``phi`` is minimised at

    s* = -phi'(0) / phi''(0) = <g, d> / (d^T H d),

and the learning rate becomes ``s*`` times the current one (every group alike, so group
ratios are kept). ``<g, d>`` is free from the gradient already in ``.grad``; ``d^T H d`` is
computed exactly (``genlr.methods.curvature``).
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from genlr.methods.base import finite
from genlr.methods.curvature import CURVATURE_MODES, PATHS, DirectionalDerivatives, batch_fraction
from genlr.methods.gen_base import GeNBase

#: ``diagnostics["curvature_path"]``: the path that gave the curvature
PATH_CODES = {**{path: i for i, path in enumerate(PATHS)}, "none": len(PATHS)}


class ExactGeN(GeNBase):
    """GeN with the exact curvature ``d^T H d`` (Bu & Xu, ICLR 2025).

    Contract:

    * Call ``step(batch, loss=loss)`` after ``loss.backward()`` instead of
      ``optimizer.step()``; ``loss_fn(model, batch)`` must recompute that loss. Every
      ``every``-th step (the first one included) is a *probe step*: the optimizer steps once
      (its state advances once), ``d`` is read off the parameters, ``<g, d>`` and
      ``d^T H d`` are computed at the pre-step parameters on the probe batch (or its first
      ``curvature_batch`` fraction) -- with ``probe="next"`` the ``probe_batch`` given to
      ``step`` (see ``GeNBase.probe_source``), with ``probe="same"`` ``batch``, whose
      ``<g, d>`` is free -- and the parameters are placed at ``theta - factor*d`` with
      every group's lr multiplied by ``factor``. Other steps are plain optimizer steps at
      the current lr.
    * After ``step`` each ``param_groups[i]["lr"]`` is the lr just chosen and applied.
    * Raises ``IncompatibleOptimizerError`` for an optimizer whose step is not linear in lr.
    * A step the GradScaler skipped changes neither parameters nor lr. A non-finite or
      non-positive curvature, or an ``s*`` that is not positive, never reaches the lr: the
      ``fallback`` ("keep" the lr, or "shrink" it by ``shrink``) is used, with
      ``diagnostics["fallback"] = 1``.
    * The curvature pass leaves BatchNorm buffers, dropout, the RNG and ``.grad`` as they
      were; it is counted in ``passes["hvp"]``.

    Diagnostics (``method/*``): ``alpha_star`` (the unsmoothed optimal lr of group 0),
    ``s_star`` (the same in units of the current lr), ``slope`` (``<g, d>``), ``curvature``
    (``d^T H d``), ``factor`` (applied lr ratio), ``accepted`` / ``fallback``, ``probed``,
    ``skipped``. Line profile (every ``profile_every`` steps): ``s`` in units of the
    optimizer's step at the lr before this step's choice (``s = 1``: the plain optimizer
    step), the real loss there and the quadratic ``phi(0) - <g,d> s + d^T H d s^2 / 2``.

    Args:
        lr_min, lr_max: bounds on the learning rate of group 0 (``None``: no upper bound).
        every: probe every this many steps (lazy GeN); 1 = every step.
        smoothing: ``lr <- smoothing*lr + (1-smoothing)*alpha_star`` (0 = take ``alpha_star``).
        max_factor: clamp of the lr change per probe to ``[1/max_factor, max_factor]``
            (2, as the parabola's; ``None``: no clamp).
        fallback: "keep" the lr or "shrink" it by ``shrink`` when the curvature is unusable.
        probe: "next" (default): measure on a batch the optimizer has not stepped on, or
            "same": on the training batch (see ``ParabolaGeN``; on the Fashion-MNIST CNN
            with AdamW "same" drove the lr from 1e-3 to 0.8 and diverged on 2 of 3 seeds).
        scale: horizon-aware factor on the GeN lr: "constant", "linear" (``1 - t/T``) or
            "cosine" (``(1 + cos(pi t/T)) / 2``); needs ``total_steps``.
        curvature: how ``d^T H d`` is computed: "auto" (the Taylor pass, checked against
            double backward on its first use; any path that can't work for the model hands
            over to the next: double backward, forward-over-reverse, and last the fallback),
            or one of "taylor", "double_backward", "forward_over_reverse" alone (errors
            raise; see ``genlr.methods.curvature``).
        curvature_batch: fraction of the batch the curvature is computed on (``None``: all).
        check_every: besides its first use, check the Taylor pass against double backward
            on a few examples every this many probes (0: the first only).
        settle: what the first probe's ``alpha_star`` may do outright (no smoothing, no
            ``max_factor``; it does not depend on the initial lr, as ``d`` scales with the
            lr and ``s*`` inversely): "down" (default) lower the lr, so a start too high
            can't wreck the model; "any" also raise it (good with Adam, measured to
            diverge with SGD: the first step's optimum is too large to train at); "off".

    Which path ran is in ``diagnostics["curvature_path"]`` (0 taylor, 1 double backward,
    2 forward-over-reverse, 3 none: the lr is kept) and, counted over the run, in
    ``summary_fields()``; ``diagnostics["check_error"]`` is the Taylor pass's disagreement
    with the reference at its last check.

    Cost model: a probe step adds one Taylor pass (about five times the matrix products of
    a forward pass, no backward) to a training step; ``every`` spreads it over that many
    steps. The measured costs per model are in docs/methods.md.
    """

    def __init__(self, optimizer, model=None, loss_fn=None, *,
                 lr_min: float = 0.0, lr_max: Optional[float] = None, every: int = 4,
                 smoothing: float = 0.9, max_factor: Optional[float] = 2.0,
                 fallback: Literal["keep", "shrink"] = "keep", shrink: float = 0.5,
                 probe: Literal["same", "next"] = "next",
                 scale: Literal["constant", "linear", "cosine"] = "constant",
                 curvature: Literal["auto", "taylor", "double_backward",
                                    "forward_over_reverse"] = "auto",
                 curvature_batch: Optional[float] = None, check_every: int = 0,
                 settle: Literal["off", "down", "any"] = "down", **common) -> None:
        super().__init__(optimizer, model, loss_fn, lr_min=lr_min, lr_max=lr_max, every=every,
                         smoothing=smoothing, max_factor=max_factor, fallback=fallback,
                         shrink=shrink, probe=probe, scale=scale, settle=settle, **common)
        if curvature not in CURVATURE_MODES:
            raise ValueError(f"curvature must be one of {CURVATURE_MODES}, got {curvature!r}")
        if curvature_batch is not None and not 0.0 < curvature_batch <= 1.0:
            raise ValueError(f"curvature_batch must be in (0, 1] or None, got {curvature_batch}")
        if check_every < 0:
            raise ValueError(f"check_every must be >= 0, got {check_every}")
        self.curvature_mode, self.curvature_batch = curvature, curvature_batch
        self.derivatives = DirectionalDerivatives(model, loss_fn, self.autocast, check_every)

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
        diag = {"slope": slope, "curvature": curvature,
                "curvature_path": float(PATH_CODES[self.derivatives.path]),
                "check_error": self.derivatives.check_error}
        s_star = slope / curvature if finite(slope, curvature) and curvature > 0 else None
        return s_star, diag, lambda s: -slope * s + 0.5 * curvature * s * s



    def summary_fields(self) -> dict[str, Any]:
        return {"curvature_paths": dict(self.derivatives.counts),
                "curvature_unavailable": dict(self.derivatives.unavailable)}
