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

import math
from typing import Any, Iterator, Literal, Optional

import torch

from genlr.methods.base import LRMethod, check_linear_in_lr, finite
from genlr.methods.curvature import CURVATURE_MODES, DirectionalDerivatives, batch_fraction

FALLBACKS = ("keep", "shrink")
PROBES = ("same", "next")
SCALES = ("constant", "linear", "cosine")


class GeNBase(LRMethod):
    """What both GeN variants share: lazy probing, the probe batch, the optimizer step
    taken once, the choice of the new learning rate from a proposed ``s*`` (smoothing,
    clamps, fallback) and the horizon-aware ``scale``.

    Subclasses implement ``estimate(params, d, batch, same, loss)`` which, starting and
    ending at ``theta - d`` (the optimizer's step), measures ``phi`` on ``batch`` (the
    training batch if ``same``, whose loss is ``loss``) and returns ``(s_star or None,
    diagnostics, model)`` where ``model(s)`` is its quadratic model of ``phi(s) - phi(0)``.
    """

    needs_loss_fn = True

    def __init__(self, optimizer, model=None, loss_fn=None, *, lr_min: float, lr_max: Optional[float],
                 every: int, smoothing: float, max_factor: Optional[float], fallback: str,
                 shrink: float, probe: str, scale: str, **common) -> None:
        super().__init__(optimizer, model, loss_fn, **common)
        check_linear_in_lr(optimizer, type(self).__name__)
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        if max_factor is not None and max_factor < 1.0:
            raise ValueError(f"max_factor must be >= 1 (or None), got {max_factor}")
        if fallback not in FALLBACKS:
            raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
        if not 0.0 < shrink <= 1.0:
            raise ValueError(f"shrink must be in (0, 1], got {shrink}")
        if lr_min < 0 or (lr_max is not None and lr_max < lr_min):
            raise ValueError(f"need 0 <= lr_min <= lr_max, got {lr_min}, {lr_max}")
        if probe not in PROBES:
            raise ValueError(f"probe must be one of {PROBES}, got {probe!r}")
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
        if scale != "constant" and not (self.total_steps and self.total_steps > 0):
            raise ValueError(f"scale={scale!r} needs the number of training steps (total_steps)")
        self.lr_min, self.lr_max = lr_min, lr_max
        self.every, self.smoothing, self.max_factor = every, smoothing, max_factor
        self.fallback, self.shrink, self.probe, self.scale = fallback, shrink, probe, scale
        # The unscaled (GeN) learning rates; the optimizer holds them times the horizon scale.
        self.base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self.probe_batches: Iterator[Any] | None = None
        self._probe_batch: Any = None
        self._previous_batch: Any = None

    # ------------------------------------------------------------------ hooks
    def estimate(self, params, d, batch, same: bool,
                 loss) -> tuple[float | None, dict[str, float], Any]:
        raise NotImplementedError

    def horizon_scale(self, step: int | None = None) -> float:
        """The factor ``scale`` puts on the GeN learning rate at ``step`` (default: now)."""
        if self.scale == "constant":
            return 1.0
        t = min(self.step_count if step is None else step, self.total_steps) / self.total_steps
        return 1.0 - t if self.scale == "linear" else 0.5 * (1.0 + math.cos(math.pi * t))

    def base_lr(self) -> float:
        """Group 0's learning rate before the horizon scale."""
        return self.base_lrs[0] if self.scale != "constant" else self.last_lr

    def _apply_scale(self) -> None:
        if self.scale != "constant":
            sigma = self.horizon_scale()
            for group, base in zip(self.optimizer.param_groups, self.base_lrs):
                group["lr"] = base * sigma

    def probe_due(self) -> bool:
        return self.step_count % self.every == 0

    @property
    def wants_probe_batch(self) -> bool:
        return self.probe == "next"

    def probe_source(self, batch: Any) -> tuple[Any, bool]:
        """The batch the probes run on, and whether it is the training batch.

        With ``probe="next"``: the ``probe_batch`` given to ``step``, else the next batch of
        ``probe_batches`` (an iterator the caller may set), else the previous step's batch
        (seen by the optimizer's momentum already, so a weaker choice), else the training
        batch itself (the very first step)."""
        if self.probe == "same":
            return batch, True
        if self._probe_batch is not None:
            return self._probe_batch, False
        if self.probe_batches is not None:
            try:
                return next(self.probe_batches), False
            except StopIteration:
                self.probe_batches = None
        if self._previous_batch is not None:
            return self._previous_batch, False
        return batch, True

    # ---------------------------------------------------------------- the step
    def step(self, batch: Any = None, loss: torch.Tensor | None = None,
             probe_batch: Any = None) -> float:
        self._apply_scale()
        before = self.lrs
        self._probe_batch = probe_batch
        try:
            self._probe_and_step(batch, loss)
        finally:
            self._previous_batch, self._probe_batch = batch, None
        if self.scale == "constant":
            self.base_lrs = self.lrs
        elif self.diagnostics["probed"]:
            for i, (old, new) in enumerate(zip(before, self.lrs)):
                if old > 0:
                    self.base_lrs[i] *= new / old
        self.diagnostics["scale"] = self.horizon_scale(self.step_count)
        self.step_count += 1
        return self.last_lr

    def _probe_and_step(self, batch: Any, loss: torch.Tensor | None) -> None:
        self.unscale_grads()
        fitted = self.complete_deferred(batch, loss)
        # A zero step (the end of a decaying scale) says nothing about the landscape.
        if not self.probe_due() or self.horizon_scale() == 0.0:
            applied = self.apply_update()
            # Lazy steps carry the last probe's measurements, so a logger sampling any
            # step sees the latest ones (``probed`` says whether they are this step's).
            self.diagnostics = {**self.diagnostics, "probed": float(fitted),
                                "skipped": float(not applied)}
            return
        captured = self.capture_direction()
        if captured is None:  # the GradScaler skipped the step: nothing moved, lr unchanged
            self.diagnostics = ({**self.diagnostics, "skipped": 1.0} if fitted else
                                {"probed": 0.0, "skipped": 1.0, "accepted": 0.0, "fallback": 0.0})
            return
        params, d = captured
        probe_batch, same = self.probe_source(batch)
        estimate = self.estimate(params, d, probe_batch, same, loss)
        if estimate is None:  # completed at the next step (``complete_deferred``)
            self.diagnostics = {**self.diagnostics, "probed": float(fitted), "skipped": 0.0}
            return
        s_star, diag, model = estimate
        factor = self.adopt(s_star, diag)
        if self.profile_due() and model is not None:
            self.record_profile(params, d, probe_batch, current=1.0, model=model,
                                anchored=True, chosen=factor)
        self.place(params, d, factor, current=1.0)

    def complete_deferred(self, batch: Any, loss: torch.Tensor | None) -> bool:
        """Finish a measurement the previous step began (``estimate`` returned None) and
        adopt its learning rate before this step's update; True if one was finished."""
        return False

    def adopt(self, s_star: float | None, diag: dict[str, float]) -> float:
        """The factor on the current lr for a proposed ``s*``; sets the diagnostics."""
        factor, accepted = self.choose(s_star)
        self.diagnostics = {
            **diag, "probed": 1.0, "skipped": 0.0,
            "alpha_star": float(s_star) * self.last_lr if s_star is not None else math.nan,
            "s_star": float(s_star) if s_star is not None else math.nan,
            "factor": factor, "accepted": float(accepted), "fallback": float(not accepted),
        }
        return factor

    def state_dict(self) -> dict[str, Any]:
        # The previous batch is what probe="next" falls back on without a probe_batch.
        previous = self._previous_batch if self.probe == "next" else None
        return {**super().state_dict(), "base_lrs": list(self.base_lrs),
                "previous_batch": previous}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.base_lrs = list(state["base_lrs"])
        self._previous_batch = state.get("previous_batch")

    def choose(self, s_star: float | None) -> tuple[float, bool]:
        """The factor on the current learning rate: smoothed towards ``s*`` (scaled by the
        horizon), clamped per update by ``max_factor`` and to ``[lr_min, lr_max]`` (on the
        unscaled lr); ``fallback`` when ``s*`` is missing, non-finite or not positive."""
        accepted = s_star is not None and finite(s_star) and s_star > 0
        if accepted:
            factor = self.smoothing + (1.0 - self.smoothing) * s_star * self.horizon_scale()
        else:
            factor = 1.0 if self.fallback == "keep" else self.shrink
        if self.max_factor is not None:
            factor = min(max(factor, 1.0 / self.max_factor), self.max_factor)
        base = self.base_lr()
        if base > 0:
            low = self.lr_min / base
            high = self.lr_max / base if self.lr_max is not None else math.inf
            factor = min(max(factor, low), high)
        return float(factor), accepted


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
    ``skipped``. ``last_profile`` (every ``profile_every`` steps): ``s`` in units of the
    optimizer's step at the lr before this step's choice (``s = 1``: the plain optimizer
    step), the real loss there and the quadratic ``phi(0) - <g,d> s + d^T H d s^2 / 2``.

    Args:
        lr_min, lr_max: bounds on the learning rate of group 0 (``None``: no upper bound).
        every: probe every this many steps (lazy GeN); 1 = every step.
        smoothing: ``lr <- smoothing*lr + (1-smoothing)*alpha_star`` (0 = take ``alpha_star``).
        max_factor: clamp of the lr change per probe to ``[1/max_factor, max_factor]``
            (``None``: no clamp).
        fallback: "keep" the lr or "shrink" it by ``shrink`` when the curvature is unusable.
        probe: "next" (default): measure on a batch the optimizer has not stepped on, or
            "same": on the training batch (see ``ParabolaGeN``; on the Fashion-MNIST CNN
            with AdamW "same" drove the lr from 1e-3 to 0.8 and diverged on 2 of 3 seeds).
        scale: horizon-aware factor on the GeN lr: "constant", "linear" (``1 - t/T``) or
            "cosine" (``(1 + cos(pi t/T)) / 2``); needs ``total_steps``.
        curvature: how ``d^T H d`` is computed: "auto" (Taylor mode, falling back to double
            backward for models with unsupported operations), "taylor", "double_backward",
            "forward_over_reverse" or "forward_forward" (see ``genlr.methods.curvature``).
        curvature_batch: fraction of the batch the curvature is computed on (``None``: all).

    Defaults (``every=4``, smoothing 0.9 as in the paper, Taylor-mode curvature on the full
    batch) cost about 1.3x a plain AdamW step on the Fashion-MNIST CNN on 2 CPU cores; see
    docs/methods.md for the measured table.
    """

    def __init__(self, optimizer, model=None, loss_fn=None, *,
                 lr_min: float = 0.0, lr_max: Optional[float] = None, every: int = 4,
                 smoothing: float = 0.9, max_factor: Optional[float] = None,
                 fallback: Literal["keep", "shrink"] = "keep", shrink: float = 0.5,
                 probe: Literal["same", "next"] = "next",
                 scale: Literal["constant", "linear", "cosine"] = "constant",
                 curvature: str = "auto", curvature_batch: Optional[float] = None,
                 **common) -> None:
        super().__init__(optimizer, model, loss_fn, lr_min=lr_min, lr_max=lr_max, every=every,
                         smoothing=smoothing, max_factor=max_factor, fallback=fallback,
                         shrink=shrink, probe=probe, scale=scale, **common)
        if curvature not in CURVATURE_MODES:
            raise ValueError(f"curvature must be one of {CURVATURE_MODES}, got {curvature!r}")
        if curvature_batch is not None and not 0.0 < curvature_batch <= 1.0:
            raise ValueError(f"curvature_batch must be in (0, 1] or None, got {curvature_batch}")
        self.curvature_mode, self.curvature_batch = curvature, curvature_batch
        self.derivatives = DirectionalDerivatives(model, loss_fn, self.autocast)

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
        diag = {"slope": slope, "curvature": curvature}
        s_star = slope / curvature if finite(slope, curvature) and curvature > 0 else None
        return s_star, diag, lambda s: -slope * s + 0.5 * curvature * s * s


