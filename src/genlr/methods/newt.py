"""Newt: a Newton step on the learning rate itself, from the lookahead gradient.

Retsinas, Sfikas, Filntisis & Maragos, "Newton-based Trainable Learning Rate", ICASSP 2023.
With ``u_t`` the optimizer's update per unit learning rate and ``g(a) = L(theta_t - a u_t)``,
the parameters take the step at ``a_t`` and the learning rate takes a damped Newton step

    a_{t+1} = a_t - gamma * g'(a_t) / g''(a_t),

where ``g'(a_t) = -<grad L(theta_{t+1}), u_t>`` needs the *lookahead* gradient and
``g''`` is approximated either by the secant of the two directional derivatives
(the paper's choice) or by the Taylor expansion around the lookahead point, which uses the
two losses (the alternative of the reference implementation's notes). The heuristics and
their constants are the reference implementation's: a loss increase scales the lr back by
0.1 (here only when the step raised the loss along a descent direction by the secant's model
too, ``Newt._overshot``), a non-positive curvature leaves it alone, the factor is clamped to
``[0, 1.05]`` and the lr to ``[1e-7, 1]``; ``gamma = 1e-3``, ``eps = 1e-9``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Literal, Optional

import torch

from genlr.curvature import (BoundLoss, TaylorPass, TaylorUnsupported, batch_fraction, dot,
                             original_module, probe_mode, result_tolerance)
from genlr.methods.base import LRMethod, as_float, check_positive_lr, finite

NOT_PSD_FACTOR = 1.0  # reference: a curvature that is not positive leaves the lr as it is


class Newt(LRMethod):
    """Newton-based trainable learning rate (Retsinas et al., ICASSP 2023).

    Contract:

    * Call ``step(batch, loss=loss)`` after ``loss.backward()`` instead of
      ``optimizer.step()``. The optimizer steps once at the current lr (its state advances
      once); then the lr is updated for the *next* step.
    * After ``step`` each ``param_groups[i]["lr"]`` is the lr chosen for the next step (with
      ``lookahead="next_step"``: the lr this step used, which the next step updates first).
    * ``lookahead`` says where the lookahead gradient ``grad L(theta_{t+1})`` comes from:

      - ``"probe"`` (the paper and reference): one extra forward and backward on the same
        batch at ``theta_{t+1}`` (``torch.autograd.grad``; ``.grad`` untouched, BatchNorm
        buffers and dropout as in every probe). With ``lookahead_batch`` set, the secant
        curvature ``<g_t - g_{t+1}, d>`` is measured on that fraction of the batch (two
        forward-backward passes there, at ``theta_t`` and ``theta_{t+1}``) and the lookahead
        slope is ``<g_t, d>`` (full batch, free) minus it.
      - ``"next_step"``: zero extra passes. The next training step's own gradient (at
        ``theta_{t+1}``, on the next batch) is the lookahead gradient; the lr is updated at
        the start of that step, before its optimizer step. Scale-back compares the two
        training losses (different batches).
      - ``"window"``: the authors' K-step variant (their public code): every ``window``
        steps, the displacement over the last window (per unit lr) plays the gradient's
        part, ``lr *= 1 + window_gamma <u_old, u_new> / (<u_old, u_old> - <u_old, u_new>)``.
        Zero extra passes; only ``lr_min``/``lr_max`` and the not-positive guard apply.

      Each reads only its own options (``READ_WHEN``; all read ``lr_min``, ``lr_max`` and
      ``per_group``): any other option away from its default is refused.
    * Raises ``IncompatibleOptimizerError`` for an optimizer whose step is not linear in lr.
    * A step the GradScaler skipped changes neither parameters nor lr; a non-finite
      lookahead never reaches the lr (``diagnostics["fallback"] = 1``).
    * Parameter groups: one factor for all groups (ratios kept), or with ``per_group`` each
      group's own Newton step from its own inner products.

    Diagnostics: ``slope`` (``<g_t, d_t>``), ``lookahead_slope`` (``<g_{t+1}, d_t>``),
    ``curvature`` (the approximated ``d^T H d``), ``alpha_star`` (the undamped Newton lr),
    ``factor``, ``accepted`` / ``fallback``, ``scaled_back``, ``lookahead_loss``,
    ``skipped``. Line profile: ``s`` in units of the step ``d_t`` just taken (``s = 1``
    is ``theta_{t+1}``); the real loss against ``phi(0) - <g_t,d_t> s + curvature s^2 / 2``.

    Args:
        gamma: damping of the Newton step on the lr (reference: 1e-3).
        approx: curvature approximation, "secant" (paper) or "taylor".
        factor_min, factor_max: clamp of the lr factor per update (``None``: off).
        scale_back: lr factor when the step went too far (``None``: off), as
            ``scale_back_when`` says: "overshot" (default) when the lookahead loss exceeds
            the current one after a step past the minimum along a descent direction
            (``_overshot``), "loss_rose" whenever the lookahead loss exceeds the current one
            (the reference's test).
        lr_min, lr_max: bounds on the lr (``None``: off).
        eps: added to the curvature denominator (reference: 1e-9).
        lookahead: "probe", "next_step" or "window" (see above).
        lookahead_batch: fraction of the batch for the curvature with ``lookahead="probe"``
            (``None``: the full batch, as the reference).
        window, window_gamma: K and gamma of ``lookahead="window"`` (the authors' code:
            gamma 0.2, K a third of an epoch).
        per_group: a Newton step per parameter group instead of one for all.
    """

    rescales_step = True
    needs_loss_fn = True  # with lookahead="probe"; the zero-pass lookaheads never call it
    # Each lookahead reads only its own options (all read lr_min, lr_max and per_group).
    READ_WHEN = {
        **{name: ("with lookahead='probe' or 'next_step'", lambda o: o["lookahead"] != "window")
           for name in ("gamma", "approx", "factor_min", "factor_max", "scale_back",
                        "scale_back_when", "eps")},
        "lookahead_batch": ("with lookahead='probe'", lambda o: o["lookahead"] == "probe"),
        **{name: ("with lookahead='window'", lambda o: o["lookahead"] == "window")
           for name in ("window", "window_gamma")},
    }

    def __init__(self, optimizer, model=None, loss_fn=None, *,
                 gamma: float = 1e-3, approx: Literal["secant", "taylor"] = "secant",
                 factor_min: Optional[float] = 0.0, factor_max: Optional[float] = 1.05,
                 scale_back: Optional[float] = 0.1,
                 scale_back_when: Literal["overshot", "loss_rose"] = "overshot",
                 lr_min: Optional[float] = 1e-7,
                 lr_max: Optional[float] = 1.0, eps: float = 1e-9,
                 lookahead: Literal["probe", "next_step", "window"] = "probe",
                 lookahead_batch: Optional[float] = 0.125, window: int = 100,
                 window_gamma: float = 0.2, per_group: bool = False, **common) -> None:
        super().__init__(optimizer, model, loss_fn, **common)
        check_positive_lr(optimizer, "Newt")
        self.check_options(locals())
        if gamma <= 0 or eps < 0:
            raise ValueError(f"need gamma > 0 and eps >= 0, got {gamma}, {eps}")
        if lookahead_batch is not None and not 0.0 < lookahead_batch <= 1.0:
            raise ValueError(f"lookahead_batch must be in (0, 1] or None, got {lookahead_batch}")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.gamma, self.approx, self.eps = gamma, approx, eps
        self.factor_min, self.factor_max, self.scale_back = factor_min, factor_max, scale_back
        self.scale_back_when = scale_back_when
        self.lr_min, self.lr_max = lr_min, lr_max
        self.lookahead, self.lookahead_batch = lookahead, lookahead_batch
        self.window, self.window_gamma, self.per_group = window, window_gamma, per_group
        # lookahead="next_step": the previous step's direction, slopes, loss and lrs
        self._previous: dict[str, Any] | None = None
        # lookahead="window": parameters at the window's start and the last window's u
        self._window_start: list[torch.Tensor] | None = None
        self._window_u: list[torch.Tensor] | None = None
        # lookahead="probe": the lookahead's slopes by forward-mode jets (``_slopes_at``)
        self._jet: TaylorPass | None = None
        self._jet_checked: set[str] = set()  # the ways it ran when checked ("compiled", ...)
        if lookahead == "probe" and model is not None and loss_fn is not None:
            steps_left = lambda: max(self.total_steps - self.step_count, 0)  # noqa: E731
            self._jet = TaylorPass(BoundLoss(original_module(model), loss_fn),
                                   passes_left=steps_left if self.total_steps else None)

    # ----------------------------------------------------------------------- step
    def step(self, batch: Any = None, loss: torch.Tensor | None = None,
             probe_batch: Any = None) -> float:
        self.unscale_grads()
        if self.lookahead == "window":
            return self._step_window()
        if self.lookahead == "next_step":
            return self._step_next(batch, loss)
        return self._step_probe(batch, loss)

    def _step_probe(self, batch: Any, loss: torch.Tensor | None) -> float:
        captured = self.capture_direction()
        if captured is None:
            return self._skipped()
        params, d = captured
        groups = self._group_index(params)
        slope0 = self._group_dots([p.grad for p in params], d, groups)
        if self.lookahead_batch is None or self.lookahead_batch >= 1.0:
            loss1, slope1 = self._slopes_at(params, d, groups, batch)
            loss0 = self._current_loss(params, d, batch, loss)
        else:
            sub = batch_fraction(batch, self.lookahead_batch)
            loss1, sub1 = self._slopes_at(params, d, groups, sub)
            self.shift(params, d, 0.0, current=1.0)
            try:
                loss0, sub0 = self._slopes_at(params, d, groups, sub)
            finally:
                self.shift(params, d, 1.0, current=0.0)
            secant = [a - b for a, b in zip(sub0, sub1)]  # <g0 - g1, d> on the sub-batch
            slope1 = [s - c for s, c in zip(slope0, secant)]
        self._update(params, d, batch, slope0, slope1, loss0, loss1, current=1.0)
        self.step_count += 1
        return self.last_lr

    def _step_next(self, batch: Any, loss: torch.Tensor | None) -> float:
        params = self.params()
        prev = self._previous
        loss_now = self.batch_mean(as_float(loss)) if loss is not None else math.nan
        if prev is not None and len(prev["d"]) == len(params) and all(
                a.shape == b.shape for a, b in zip(prev["d"], params)):
            groups = self._group_index(params)
            slope1 = self._group_dots([p.grad for p in params], prev["d"], groups)
            if finite(*slope1):
                self._update(params, prev["d"], batch, prev["slope0"], slope1, prev["loss"],
                             loss_now, current=1.0, lrs=prev["lrs"])
            else:
                self._fallback_diagnostics(nonfinite=True)
        else:
            self.diagnostics = {"accepted": 0.0, "fallback": 0.0, "skipped": 0.0}
        lrs = self.lrs
        captured = self.capture_direction()
        if captured is None:
            self._previous = None
            return self._skipped()
        params, d = captured
        slope0 = self._group_dots([p.grad for p in params], d, self._group_index(params))
        self._previous = {"d": d, "slope0": slope0, "loss": loss_now, "lrs": lrs}
        self.step_count += 1
        return self.last_lr

    def _step_window(self) -> float:
        params = self.params()
        if self._window_start is None or len(self._window_start) != len(params):
            self._window_start = [p.detach().clone() for p in params]
            self._window_u = None
        applied = self.apply_update()
        self.step_count += 1
        self.diagnostics = {"skipped": float(not applied), "accepted": 0.0, "fallback": 0.0}
        if self.step_count % self.window:
            return self.last_lr
        with torch.no_grad():
            groups = self._group_index(params)
            lrs = self.lrs
            u_new = [(start - p.detach()) / lrs[g] for start, p, g in zip(self._window_start, params, groups)]
            for start, p in zip(self._window_start, params):
                start.copy_(p.detach())
        u_old, self._window_u = self._window_u, u_new
        if u_old is None:
            return self.last_lr
        cross = self._group_dots(u_old, u_new, groups)
        old = self._group_dots(u_old, u_old, groups)
        factors, accepted = [], True
        for c, o in zip(cross, old):
            den = o - c + 1e-10
            factor = 1.0 + self.window_gamma * c / den if finite(c, o) and den > 0 else NOT_PSD_FACTOR
            if not factor > 0:
                factor = NOT_PSD_FACTOR
            accepted &= factor != NOT_PSD_FACTOR or (finite(c, o) and den > 0)
            factors.append(factor)
        self._apply_factors(factors)
        self.diagnostics.update({"factor": factors[0], "accepted": float(accepted),
                                 "fallback": float(not accepted), "window_cross": cross[0],
                                 "window_norm": old[0]})
        return self.last_lr

    # -------------------------------------------------------------- the lr update
    def _update(self, params, d, batch, slope0: list[float], slope1: list[float], loss0: float,
                loss1: float, current: float, lrs: list[float] | None = None) -> None:
        """Newton step on the lr from the slopes ``<g_t, d>`` and ``<g_{t+1}, d>`` per group
        (one group of all parameters unless ``per_group``)."""
        lrs = self.lrs if lrs is None else lrs
        group_lrs = lrs if self.per_group else [lrs[0]]
        factors, info = [], {}
        for i, (s0, s1, lr) in enumerate(zip(slope0, slope1, group_lrs)):
            factor, info_i = self._factor(lr, s0, s1, loss0, loss1)
            factors.append(factor)
            if i == 0:
                info = info_i
        if self.profile_due() and self.model is not None and self.loss_fn is not None:
            s0, curvature = slope0[0], info["curvature"]
            if finite(s0, curvature):
                self.record_profile(params, d, batch, current=current, anchored=True,
                                    model=lambda s: -s0 * s + 0.5 * curvature * s * s,
                                    chosen=info["alpha_star"] / group_lrs[0])
        self._apply_factors(factors)
        self.diagnostics = {**info, "factor": factors[0], "skipped": 0.0}

    def _factor(self, lr: float, slope0: float, slope1: float, loss0: float,
                loss1: float) -> tuple[float, dict[str, float]]:
        """The reference implementation's rule, in the units it uses (``u = d / lr``)."""
        if self.approx == "secant":
            num, den = slope1 / lr, (slope0 - slope1) / lr
            curvature = slope0 - slope1
        else:
            num, den = slope1, 2.0 * (loss0 - loss1 - slope1)
            curvature = den
        info = {"slope": slope0, "lookahead_slope": slope1, "curvature": curvature,
                "lookahead_loss": loss1, "scaled_back": 0.0}
        alpha_star = lr * (1.0 + num / den) if finite(num, den) and den != 0 else math.nan
        info["alpha_star"] = alpha_star
        needs_losses = self.approx == "taylor"
        if not finite(num, den) or (needs_losses and not finite(loss0, loss1)):
            return 1.0, {**info, "accepted": 0.0, "fallback": 1.0}
        rose = finite(loss0, loss1) and loss1 > loss0
        if self.scale_back is not None and rose and (
                self.scale_back_when == "loss_rose" or self._overshot(slope0, slope1)):
            return self.scale_back, {**info, "accepted": 1.0, "fallback": 0.0, "scaled_back": 1.0}
        if den < self.eps or den <= 0:
            return NOT_PSD_FACTOR, {**info, "accepted": 0.0, "fallback": 1.0}
        factor = 1.0 + self.gamma * num / (den + self.eps)
        if self.factor_min is not None:
            factor = max(factor, self.factor_min)
        if self.factor_max is not None:
            factor = min(factor, self.factor_max)
        return factor, {**info, "accepted": 1.0, "fallback": 0.0}

    @staticmethod
    def _overshot(slope0: float, slope1: float) -> bool:
        """Whether a step that raised the loss went past the minimum of a descent direction
        (``<g_t, d> > 0``) by the secant's own quadratic model too (``<g_t + g_{t+1}, d> < 0``:
        the mean slope over the step is uphill, ``s* < 1/2``). A loss increase alone (the
        reference's test, ``scale_back_when="loss_rose"``) also fires on steps that are not
        descent directions for this batch, on float32 rounding, and on the noise of a long
        run, where each x0.1 is not won back (docs/methods.md, "Newt")."""
        return slope0 > 0 and slope0 + slope1 < 0

    def _apply_factors(self, factors: list[float]) -> None:
        groups = self.optimizer.param_groups
        if len(factors) == 1:  # one factor, clamped on group 0, applied to all (ratios kept)
            lr0 = float(groups[0]["lr"])
            target = self._clamp(lr0 * factors[0])
            factors = [target / lr0 if lr0 > 0 else 1.0] * len(groups)
            for group, f in zip(groups, factors):
                group["lr"] = group["lr"] * f
            return
        for group, f in zip(groups, factors):
            group["lr"] = self._clamp(float(group["lr"]) * f)

    def _clamp(self, lr: float) -> float:
        if self.lr_min is not None:
            lr = max(lr, self.lr_min)
        if self.lr_max is not None:
            lr = min(lr, self.lr_max)
        return lr

    # -------------------------------------------------------------------- helpers
    def _skipped(self) -> float:
        self.diagnostics = {"skipped": 1.0, "accepted": 0.0, "fallback": 0.0}
        self.step_count += 1
        return self.last_lr

    def _fallback_diagnostics(self, nonfinite: bool) -> None:
        self.diagnostics = {"accepted": 0.0, "fallback": 1.0, "nonfinite": float(nonfinite),
                            "skipped": 0.0}

    def _group_index(self, params: list[torch.Tensor]) -> list[int]:
        """For each parameter, its group's index (0 for all unless ``per_group``)."""
        if not self.per_group:
            return [0] * len(params)
        where = {id(p): i for i, g in enumerate(self.optimizer.param_groups) for p in g["params"]}
        return [where[id(p)] for p in params]

    def _group_dots(self, xs, ys, groups: list[int]) -> list[float]:
        count = len(self.optimizer.param_groups) if self.per_group else 1
        out = []
        for i in range(count):
            pairs = [(x, y) for x, y, g in zip(xs, ys, groups) if g == i and x is not None]
            out.append(dot([x for x, _ in pairs], [y for _, y in pairs]))
        return out

    def _slopes_at(self, params: list[torch.Tensor], d: list[torch.Tensor], groups: list[int],
                   batch: Any) -> tuple[float, list[float]]:
        """``L`` and ``<grad L, d>`` (per group) at the current parameters on ``batch``,
        averaged over ranks. Newt reads the lookahead gradient only through its inner
        product with ``d``: a directional derivative, which a first-order jet gives in one
        forward pass with its tangent (compiled; three products a layer, no backward, no
        tape; its cost in docs/methods.md, "Cost"). Checked against the forward and backward
        once in each way it runs (interpreted, then compiled once that pays); where the jet
        can't (per-group slopes, a model without a Taylor pass) the forward and backward run."""
        if self._jet is not None and not self.per_group:
            try:
                with torch.no_grad(), probe_mode(self.model) as probe, self.autocast():
                    loss, slope, _ = self._jet.jet(params, d, batch, order=1)
                self.probes_removed_dropout |= probe.removed > 0 and self.model.training
                self.passes["forward"] += 1
                if (self._jet.mode in self._jet_checked
                        or self._check_jet(params, d, groups, batch, slope)):
                    return self.batch_mean(loss), [self.batch_mean(slope)]
            except TaylorUnsupported as err:
                self._jet = None
                warnings.warn(f"newt: the lookahead's slope by a jet can't be used ({err}); a "
                              "forward and backward pass gives it", RuntimeWarning, stacklevel=3)
        loss, grads = self._loss_and_grads(params, batch)
        return loss, [self.batch_mean(v) for v in self._group_dots(grads, d, groups)]

    def _check_jet(self, params, d, groups, batch, slope: float) -> bool:
        """The jet's slope against the gradient's, once per way the jet runs (float32: 1e-3
        of it; under autocast what that precision's rounding allows); on disagreement the jet
        is dropped."""
        _, grads = self._loss_and_grads(params, batch)
        reference = self._group_dots(grads, d, groups)[0]
        if not finite(reference):  # nothing to learn here: check next time
            return True
        self._jet_checked.add(self._jet.mode)
        tolerance = result_tolerance(params[0].dtype, self.autocast)
        if abs(slope - reference) <= tolerance * max(abs(reference), 1e-30):
            return True
        self._jet = None
        warnings.warn(f"newt: the lookahead's slope by a jet disagrees with the gradient's "
                      f"({slope:.6g} vs {reference:.6g}); a forward and backward pass gives it",
                      RuntimeWarning, stacklevel=4)
        return False

    def _loss_and_grads(self, params: list[torch.Tensor], batch: Any) -> tuple[float, list]:
        """Loss and gradient at the current parameters, without touching ``.grad``."""
        assert self.model is not None and self.loss_fn is not None
        self.passes["forward"] += 1
        self.passes["backward"] += 1
        with torch.enable_grad():
            with probe_mode(self.model) as probe, self.autocast():
                loss = self.loss_fn(self.model, batch)
            self.probes_removed_dropout |= probe.removed > 0 and self.model.training
            scale = self.scaler.get_scale() if self.scaler is not None else 1.0
            grads = torch.autograd.grad(loss * scale if scale != 1.0 else loss, params,
                                        allow_unused=True)
        if scale != 1.0:
            grads = tuple(g / scale if g is not None else None for g in grads)
        return self.batch_mean(as_float(loss)), list(grads)

    def _current_loss(self, params, d, batch, loss) -> float:
        """``L(theta_t)`` on the batch: the training loss when it is the probes' function."""
        if loss is not None and not self.applies_dropout():
            return self.batch_mean(as_float(loss))
        self.shift(params, d, 0.0, current=1.0)
        try:
            return self.probe_loss(batch)
        finally:
            self.shift(params, d, 1.0, current=0.0)

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "previous": self._previous,
                "window_start": self._window_start, "window_u": self._window_u}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._previous = state.get("previous")
        self._window_start = state.get("window_start")
        self._window_u = state.get("window_u")
