"""What both GeN variants share (Bu & Xu, "Gradient descent with generalized Newton's
method", ICLR 2025, arXiv:2407.02772): lazy probing, the probe batch, the optimizer step
taken once, the choice of the new learning rate from a proposed ``s*`` (smoothing, clamps,
fallback) and the horizon-aware scale. ``ExactGeN`` and ``ParabolaGeN`` differ only in how
they measure ``phi(s) = L(theta - s*d)`` (``GeNBase.estimate``).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch

from genlr.methods.base import LRMethod, check_linear_in_lr, finite
from genlr.methods.schedules import DECAYS

FALLBACKS = ("keep", "shrink")
PROBES = ("same", "next")
SCALES = tuple(DECAYS)  # the horizon-aware scale's shapes: constant, linear, cosine
# What the first accepted s* may do outright: nothing more than any probe ("off"), lower the
# lr without smoothing or clamp ("down": a start too high can't wreck the model), or set it
# either way ("any").
SETTLES = ("off", "down", "any")


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
                 shrink: float, probe: str, scale: str, settle: str, **common) -> None:
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
        if settle not in SETTLES:
            raise ValueError(f"settle must be one of {SETTLES}, got {settle!r}")
        if scale != "constant" and not (self.total_steps and self.total_steps > 0):
            raise ValueError(f"scale={scale!r} needs the number of training steps (total_steps)")
        self.lr_min, self.lr_max = lr_min, lr_max
        self.every, self.smoothing, self.max_factor = every, smoothing, max_factor
        self.fallback, self.shrink, self.probe, self.scale = fallback, shrink, probe, scale
        self.settle = settle
        self.settled = False  # whether the first accepted s* has been seen
        # The unscaled (GeN) learning rates; the optimizer holds them times the horizon scale.
        self.base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self._probe_batch: Any = None
        self._previous_batch: Any = None

    # ------------------------------------------------------------------ hooks
    def estimate(self, params, d, batch, same: bool,
                 loss) -> tuple[float | None, dict[str, float], Any]:
        raise NotImplementedError

    def horizon_scale(self, step: int | None = None) -> float:
        """The factor ``scale`` puts on the GeN learning rate at ``step`` (default: now)."""
        if self.scale == "constant":  # no horizon needed
            return 1.0
        t = min(self.step_count if step is None else step, self.total_steps) / self.total_steps
        return DECAYS[self.scale](t)

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

        With ``probe="next"``: the ``probe_batch`` given to ``step``, else the previous step's
        batch (seen by the optimizer's momentum already, so a weaker choice), else the
        training batch itself (the very first step)."""
        if self.probe == "same":
            return batch, True
        if self._probe_batch is not None:
            return self._probe_batch, False
        if self._previous_batch is not None:
            return self._previous_batch, False
        return batch, True

    # ---------------------------------------------------------------- the step
    def step(self, batch: Any = None, loss: torch.Tensor | None = None,
             probe_batch: Any = None) -> float:
        self._apply_scale()
        before = self.lrs
        self._probe_batch = probe_batch
        updates = self.updates
        try:
            self._probe_and_step(batch, loss)
        finally:
            self._previous_batch, self._probe_batch = batch, None
            if self.updates != updates:  # the optimizer stepped (even if a probe raised after)
                self._finish_step(before)
        return self.last_lr

    def _finish_step(self, lrs_before: list[float]) -> None:
        if self.scale == "constant":
            self.base_lrs = self.lrs
        elif self.diagnostics.get("probed"):
            for i, (old, new) in enumerate(zip(lrs_before, self.lrs)):
                if old > 0:
                    self.base_lrs[i] *= new / old
        self.diagnostics["scale"] = self.horizon_scale(self.step_count)
        self.step_count += 1

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
                "previous_batch": previous, "settled": self.settled}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.base_lrs = list(state["base_lrs"])
        self._previous_batch = state.get("previous_batch")
        self.settled = state.get("settled", True)

    def settling(self) -> bool:
        """Whether this probe may set the lr outright: ``settle`` and no s* accepted yet."""
        return self.settle != "off" and not self.settled

    def choose(self, s_star: float | None) -> tuple[float, bool]:
        """The factor on the current learning rate: smoothed towards ``s*`` (scaled by the
        horizon), clamped per update by ``max_factor`` and to ``[lr_min, lr_max]`` (on the
        unscaled lr); ``fallback`` when ``s*`` is missing, non-finite or not positive. The
        first accepted ``s*`` is taken outright (within the bounds) as ``settle`` allows."""
        accepted = s_star is not None and finite(s_star) and s_star > 0
        outright = accepted and self.settling() and (
            self.settle == "any" or s_star * self.horizon_scale() < 1.0)
        if accepted:
            self.settled = True
        if outright:
            factor = s_star * self.horizon_scale()
        elif accepted:
            factor = self.smoothing + (1.0 - self.smoothing) * s_star * self.horizon_scale()
            if self.max_factor is not None:
                factor = min(max(factor, 1.0 / self.max_factor), self.max_factor)
        else:
            factor = 1.0 if self.fallback == "keep" else self.shrink
        base = self.base_lr()
        if base > 0:
            low = self.lr_min / base
            high = self.lr_max / base if self.lr_max is not None else math.inf
            factor = min(max(factor, low), high)
        return float(factor), accepted
