"""What both GeN variants share (Bu & Xu, "Gradient descent with generalized Newton's
method", ICLR 2025, arXiv:2407.02772): when to probe, the probe batch, the optimizer step
taken once, the rule that turns measurements of ``phi(s) = L(theta - s*d)`` into the next
learning rate, and the horizon-aware scale. ``ExactGeN`` and ``ParabolaGeN`` differ only in
how they measure ``phi`` (``GeNBase.estimate``).

Two rules (docs/methods.md, "GeN's rule: search, band, net"):

* ``"line_search"``, the paper's: every ``every`` steps, move the lr towards
  ``alpha* = s* lr``, the minimiser of the quadratic model of ``phi``, smoothed
  (``lr <- 0.9 lr + 0.1 alpha*``), ``alpha*`` clamped to within ``max_factor`` of the lr.
* ``"band"`` (default), in three parts:

  - *search*: the initial lr is nobody's evidence, so the first probe that shows a
    descent along the step puts the lr at ``FIRST_LANDING = 1/2`` times its ``alpha*``, up
    or down (the first step per unit lr, and so that ``alpha*``, is the same from every
    start for SGD and Adam-type optimizers, and so is the run after it); then, probing
    every step, a probe that puts the lr above the band's top edge cuts it to its point
    estimate (as a backtracking line search cuts), over the first three steps at least
    (momentum builds the step up after the first);
  - *band*: then it holds the lr while the probes are consistent with it lying in
    ``[2(1-c) alpha*, 2 alpha*]`` and moves only when they show it outside (while its
    window warms up, a probe that puts the lr twice above the edge cuts as the search
    does; no rise on a step that spiked the loss). Once the update
    noise dominates, the fluctuation-dissipation relation of SGD (Yaida, ICLR 2019) gives
    ``E[phi(0) - phi(1)] = 0``, i.e. ``s* = 1/2`` at *every* stable lr, and the sharpness
    along the step adapts to the lr (Cohen et al., ICLR 2021; arXiv:2207.14484), so ``s*``
    no longer tells which lr is right, only that the run is stationary; the line search
    then halves the lr again and again (the short-horizon bias of a greedy step size, Wu et
    al., ICLR 2018). Above ``2 alpha*`` the step raises the expected loss; up to
    ``2(1-c) alpha*`` it meets Armijo's sufficient decrease (a decrease of at least ``c``
    times the linear model's, Armijo 1966; ``c = 0.1`` as in the stochastic Armijo line
    search of Vaswani et al., NeurIPS 2019, which also takes the largest step that meets
    it); in between, annealing is the horizon scale's job. A rise also needs the latest
    probe's own Armijo step above the lr (the first steps' transient line search, far above
    the lr that suits the rest of a run, can't carry it). Probing is lazy where the lr
    holds: the gap between probes doubles up to four steps, and up to ``every`` once a
    window of probes has held the lr without their mean calling for a rise; it falls back
    to one step after any move, so that a new lr is checked at the next step, and while
    the window warms up;
  - *net*: a spike of the training loss beyond its step-to-step noise (``LossWatch``)
    gets a probe at once, and a rise there, or a second spike in a row, is answered at
    once, as a backtracking line search answers a failed Armijo test: the lr at least
    halves (``2^k`` on the ``k``-th spike in a row), and falls below that probe's own edge
    where that is lower; a divergence that goes on spikes again.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from typing import Any, Literal, Optional

import torch

from genlr.methods.base import (LRMethod, as_float, check_positive_lr,
                               finite)
from genlr.methods.schedules import DECAYS
from genlr.options import shared_options

#: the band moves the lr only when its estimate lies this many standard errors beyond an edge
BAND_MARGIN = 2.0
#: Armijo's sufficient-decrease constant: on the quadratic model the largest lr that meets
#: it is ``2 (1 - ARMIJO_C) alpha*``, where the band's lr climbs to
ARMIJO_C = 0.1
#: a training loss that rose by more than this many times the root mean square of its
#: recent step-to-step changes is a spike: the step is probed, and a rise there is the net's
SPIKE_MARGIN = 6.0
#: the search's first measured probe puts the lr at this multiple of its line search
#: ``alpha*``, up or down: below ``alpha*``, since the curvature along the step rises over
#: the next steps (momentum builds the step up, the sharpness adapts to the lr), and the
#: same multiple from every start (set before any run: the band's top edge is ``2 alpha*``)
FIRST_LANDING = 0.5
#: until a window of probes has held the lr (``next_gap``), the band probes at least every
#: this many steps (up to ``every`` after: those probes add to a window that already rules)
UNSETTLED_GAP = 4


class LineSearchWindow:
    """The line-search learning rate ``alpha*`` over the last ``size`` probes, as a ratio of
    means: ``alpha* = mean(slope/lr) / mean(curvature/lr^2)``, the minimiser of the mean
    quadratic model of the loss along the step (not the mean of noisy ratios, which a
    curvature near zero swamps), with its standard error by the delta method. Slope and
    curvature are taken per unit lr (the step ``d`` scales with the lr it was taken at), so
    probes at different learning rates average in one unit."""

    MIN_PROBES = 3  # a standard error needs a few samples

    def __init__(self, size: int) -> None:
        self.samples: deque[tuple[float, float]] = deque(maxlen=size)

    def add(self, slope: float, curvature: float, lr: float) -> None:
        """One probe's measurement at ``lr`` (> 0); one that overflows per unit lr (an lr
        near the smallest float) is left out."""
        per_unit = (slope / lr, curvature / lr / lr)  # not lr**2, which underflows to 0
        if finite(*per_unit):
            self.samples.append(per_unit)

    def estimate(self, min_probes: int = MIN_PROBES) -> tuple[float, float]:
        """``(alpha*, standard error)``; NaN with fewer than ``min_probes`` probes or when
        the mean curvature is not positive; the error NaN with a single probe."""
        n = len(self.samples)
        if n < max(min_probes, 1):
            return math.nan, math.nan
        xs, ys = zip(*self.samples)
        mx, my = sum(xs) / n, sum(ys) / n
        if not my > 0:
            return math.nan, math.nan
        alpha = mx / my
        if n == 1:
            return alpha, math.nan
        # Var(mx/my) ~ Var(x - alpha*y) / (n my^2)
        residual = sum((x - alpha * y) ** 2 for x, y in self.samples) / (n - 1)
        return alpha, math.sqrt(residual / n) / my

class LossWatch:
    """Spikes of the training loss: a step-to-step rise beyond ``SPIKE_MARGIN`` times the
    root mean square of the recent changes (an exponential average over about ten steps,
    after ``WARMUP`` of them, a rise clipped to the margin and a fall to the root mean
    square), which a noisy loss crosses rarely and a diverging one at once, and how many
    came in a row. Changes are relative (of the log of the loss) while the loss is
    positive: a loss that has fallen a hundredfold since a spike must not be judged by the
    absolute noise it had then (Beale: a divergence grew x2 to x5 a step unflagged); a loss
    that reaches zero or below is watched in absolute changes from then on."""

    DECAY, WARMUP = 0.9, 4

    def __init__(self, last: float = math.nan, mean_square: float = 0.0, seen: int = 0,
                 streak: int = 0, relative: bool = True) -> None:
        self.last, self.mean_square, self.seen = last, mean_square, seen
        self.streak = streak  # spikes in a row, up to the latest step
        self.relative = relative

    def spiked(self, loss: float) -> bool:
        if self.relative and finite(loss) and not loss > 0:  # absolute from here, warmed anew
            self.relative, self.mean_square, self.seen = False, 0.0, 0
        previous, self.last = self.last, loss
        change = (math.log(loss / previous) if self.relative and previous > 0
                  else loss - previous)
        if not finite(change):
            return False
        # The average starts at zero: divided by its weight, 1 - DECAY^seen, it is unbiased
        # from the first steps on (else the first steps' margin is sqrt(3) times too tight)
        noise = self.mean_square / (1.0 - self.DECAY**self.seen) if self.seen else 0.0
        limit = SPIKE_MARGIN * math.sqrt(noise)
        warm = self.seen >= self.WARMUP
        spike = warm and change > limit
        self.streak = self.streak + 1 if spike else 0
        if warm:  # a spike is not noise, nor a plunge (a recovery): neither may mask the next
            change = max(min(change, limit), -math.sqrt(noise))
        self.mean_square = self.DECAY * self.mean_square + (1.0 - self.DECAY) * change * change
        self.seen += 1
        return spike

    def state(self) -> tuple[float, float, int, int, bool]:
        return self.last, self.mean_square, self.seen, self.streak, self.relative


class GeNBase(LRMethod):
    """What both GeN variants share, on top of the ``LRMethod`` contract.

    A *probe step* (the first step, then as the rule asks: see ``every``) goes: the
    optimizer steps once, ``d`` is read off the parameters, ``phi(s) = L(theta - s d)`` is
    measured on the probe batch (``estimate``), the rule gives a factor, and the parameters
    are placed at ``theta - factor d`` with every group's lr times ``factor``. Other steps
    are plain optimizer steps. With a horizon ``scale``, the optimizer's lr is the GeN lr
    times the scale, and the rule moves the GeN lr. A step the GradScaler skipped changes
    neither parameters nor lr; a measurement that is not finite never reaches the lr.

    Subclasses implement ``estimate(params, d, batch, same, loss)`` which, starting and
    ending at ``theta - d`` (the optimizer's step), measures ``phi`` on ``batch`` (the
    training batch if ``same``, whose loss is ``loss``) and returns ``(s_star or None,
    diagnostics, model)``: ``diagnostics`` holds ``slope`` (``-phi'(0)``) and ``curvature``
    (``phi''(0)``), ``model(s)`` is the quadratic model of ``phi(s) - phi(0)``.

    Options, both variants' (``shared_options``; each variant's own are in its docstring):
        rule: "band" (search from the initial lr, then hold the lr while the last
            ``window`` probes put it within ``[1.8 alpha*, 2 alpha*]``, with a net against
            divergence; see the module docstring) or "line_search" (the paper's: towards
            ``alpha*`` with ``smoothing`` every ``every`` steps).
        window: probes averaged by the band (the ratio of their mean slope and curvature).
        every: with "line_search", probe every this many steps (lazy GeN); with "band",
            the largest gap between probes while the lr holds (at most ``UNSETTLED_GAP``
            until a window of probes has held it without calling for a rise).
        smoothing: the line search's ``lr <- smoothing*lr + (1-smoothing)*alpha*``.
        max_factor: the lr rises by at most this factor per probe (``None``: no clamp);
            the line search's ``alpha*`` is clamped to within it of the lr, the band's
            falls are limited by it except the net's.
        probe: "next": measure on a batch the optimizer has not stepped on (the
            ``probe_batch`` given to ``step``, else the previous step's batch); "same": on
            the training batch, whose own noise makes ``s*`` too large (docs/methods.md).
        scale: horizon-aware factor on the GeN lr: "constant", "linear" (``1 - t/T``) or
            "cosine" (``(1 + cos(pi t/T)) / 2``); needs ``total_steps``.
        lr_min, lr_max: bounds on group 0's GeN lr (``None``: no upper bound).
        fallback, shrink: with no usable measurement "keep" the lr or "shrink" it by
            ``shrink``.
    """

    rescales_step = True
    needs_loss_fn = True
    wants_probe_batch = True  # with probe="next"
    READ_WHEN = {
        "window": ("with rule='band'", lambda o: o["rule"] == "band"),
        "smoothing": ("with rule='line_search'", lambda o: o["rule"] == "line_search"),
        "shrink": ("with fallback='shrink' or max_factor=None",  # (clamped: a factor <= 0)
                   lambda o: o["fallback"] == "shrink" or o["max_factor"] is None),
    }

    @shared_options  # declared once, here: each variant's __init__ takes them as **shared
    def __init__(self, optimizer, model=None, loss_fn=None, *,
                 rule: Literal["band", "line_search"] = "band", window: int = 10,
                 every: int = 16, smoothing: float = 0.9, max_factor: Optional[float] = 2.0,
                 probe: Literal["same", "next"] = "next",
                 scale: Literal["constant", "linear", "cosine"] = "constant",
                 lr_min: float = 0.0, lr_max: Optional[float] = None,
                 fallback: Literal["keep", "shrink"] = "keep", shrink: float = 0.5,
                 **common) -> None:
        super().__init__(optimizer, model, loss_fn, **common)
        check_positive_lr(optimizer, type(self).__name__)
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        if max_factor is not None and max_factor < 1.0:
            raise ValueError(f"max_factor must be >= 1 (or None), got {max_factor}")
        if not 0.0 < shrink <= 1.0:
            raise ValueError(f"shrink must be in (0, 1], got {shrink}")
        if lr_min < 0 or (lr_max is not None and lr_max < lr_min):
            raise ValueError(f"need 0 <= lr_min <= lr_max, got {lr_min}, {lr_max}")
        if scale != "constant" and not (self.total_steps and self.total_steps > 0):
            raise ValueError(f"scale={scale!r} needs the number of training steps (total_steps)")
        self.rule, self.window = rule, LineSearchWindow(window)
        self.lr_min, self.lr_max = lr_min, lr_max
        self.every, self.smoothing, self.max_factor = every, smoothing, max_factor
        self.fallback, self.shrink, self.probe, self.scale = fallback, shrink, probe, scale
        # The band's state: searching, the probes since the lr last moved and the step it
        # moved at, and the gap from the last probe step to the next.
        self.searching, self.trial = rule == "band", LineSearchWindow(window)
        self.moved_at, self.landed = 0, False
        self.gap, self.last_probe = (1 if rule == "band" else every), -math.inf
        # The training loss's last value and the mean square of its recent step-to-step
        # changes (an exponential average over about ten steps), for the band's spikes.
        self.loss_watch = LossWatch()
        self.spiked = False
        # What the rule did over the run (``lr_account``): probes and their decisions.
        self.account: Counter[str] = Counter()
        self.last_measured: dict[str, float] = {}
        # The unscaled (GeN) learning rates; the optimizer holds them times the horizon scale.
        self.base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self.initial_lr = self.base_lrs[0]
        self._probe_batch: Any = None
        self._previous_batch: Any = None

    # ------------------------------------------------------------------ hooks
    def estimate(self, params, d, batch, same: bool,
                 loss) -> tuple[float | None, dict[str, float], Any]:
        raise NotImplementedError

    def probes_left(self) -> float:
        """The probes the run still expects at the lazy pace (``every``): what a one-off
        cost of probing (compiling the Taylor pass) is weighed against."""
        return max(self.total_steps - self.step_count, 0) / self.every

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
        return self.spiked or self.step_count >= self.last_probe + self.gap

    def checking(self) -> bool:
        """Whether this probe tries an lr the band has just moved to, or searches: then its
        measurement must come before the step is taken (``ParabolaGeN``'s ``defer`` waits)."""
        return self.rule == "band" and (self.searching or self.gap == 1 or self.spiked)

    def probes_next_batch(self) -> bool:
        """Whether this step's probes run on the batch the next step trains on (``probe=
        "next"``, given a ``probe_batch``: see ``probe_source``)."""
        return self.probe == "next" and self._probe_batch is not None

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
        if self.rule == "band" and loss is not None:
            self.spiked = self.loss_watch.spiked(self.batch_mean(as_float(loss)))
            self.account["loss spikes"] += self.spiked
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
        self.diagnostics["gen_lr"] = self.base_lr()  # the rule's own lr, before the scale
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
        self.last_probe = self.step_count
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
        """The factor on the current lr from this probe's ``s*`` (None: unusable) and its
        ``slope`` and ``curvature`` (in ``diag``, per the step at the current lr); sets the
        diagnostics and, with the band, when the next probe is due."""
        lr = self.last_lr
        measured = finite(diag.get("slope", math.nan), diag.get("curvature", math.nan))
        usable = s_star is not None and finite(s_star) and s_star > 0
        net, searching, landed = False, self.searching, self.landed
        if self.rule == "line_search":
            factor, fallback = self.line_search_factor(s_star if usable else None)
        elif measured and lr > 0:
            slope, curvature = diag["slope"], diag["curvature"]
            net = self.net_catches(slope, curvature)
            factor, fallback = (self.net_factor(s_star if usable else None) if net
                                else self.band_factor(slope, curvature, lr))
        else:
            factor, fallback = 1.0, True
        if fallback:
            factor = 1.0 if self.fallback == "keep" else self.shrink
        factor = self.bounded(factor)
        if self.rule == "band":
            self.gap = self.next_gap(factor)
            if factor != 1.0:  # the probes at the current lr, and since when
                self.trial.samples.clear()
                self.moved_at = self.step_count
        alpha, error = self.window.estimate() if self.rule == "band" else (math.nan, math.nan)
        self.account["probes"] += 1
        self.account["fell back" if fallback else "landed" if self.landed != landed else
                     "rose" if factor > 1.0 else "held" if factor == 1.0 else
                     "netted" if net else "cut by the search" if searching else "fell"] += 1
        self.last_measured = {"s_star": float(s_star) if s_star is not None else math.nan,
                              "window_alpha": alpha, "window_error": error}
        self.diagnostics = {
            **diag, "probed": 1.0, "skipped": 0.0,
            "alpha_star": float(s_star) * lr if s_star is not None else math.nan,
            "s_star": float(s_star) if s_star is not None else math.nan,
            "window_alpha": alpha, "window_error": error,
            "factor": factor, "accepted": float(usable if self.rule == "line_search" else measured),
            "fallback": float(fallback), "searching": float(self.searching), "net": float(net),
        }
        return factor

    def next_gap(self, factor: float) -> int:
        """Steps from this probe to the next under the band: lazy (doubling up to
        ``UNSETTLED_GAP``, and up to ``every`` once a window of probes has held the lr and
        their mean line search does not put its Armijo step above it) only while the lr
        holds; the next step while searching, while the window warms up and after a move,
        so that a new lr is checked before it has run for long. A settled run spends little
        on probes (issue 27: ParabolaGeN's two forwards every fourth step cost it 1.2-1.3x
        AdamW), and a spike of the loss still gets a probe at once."""
        warming = len(self.window.samples) < LineSearchWindow.MIN_PROBES
        if self.searching or warming or factor != 1.0:
            return 1
        # Settled: a window of probes has held this lr and their mean does not call for a
        # rise its noise keeps from being certified (from x0.1 on the CNN the window could
        # not rule for ten probes while its mean put the line search 20x above the lr).
        alpha, _ = self.window.estimate()
        settled = (len(self.trial.samples) == self.trial.samples.maxlen
                   and not 2.0 * (1.0 - ARMIJO_C) * alpha > self.base_lr())
        return min(2 * self.gap, self.every if settled else min(self.every, UNSETTLED_GAP))

    def line_search_factor(self, s_star: float | None) -> tuple[float, bool]:
        """The paper's rule (its authors' code): ``lr <- smoothing*lr + (1-smoothing)*alpha*``,
        ``alpha*`` clamped to within ``max_factor`` of the lr, then scaled by the horizon;
        ``(factor, fallback)``."""
        if s_star is None:
            return 1.0, True
        target = self.clamped(s_star) * self.horizon_scale()
        return self.smoothing + (1.0 - self.smoothing) * target, False

    def net_catches(self, slope: float, curvature: float) -> bool:
        """Whether the training loss has just spiked (``LossWatch``) and this probe's step
        raises the loss too (``phi(1) > phi(0)`` on its quadratic model), or spiked the
        step before as well: a divergence, which shows in the loss at once, where a single
        probe's rise is as often noise (a language model's curvature along the step jumps
        a hundredfold and settles) and a quadratic model far from a minimum can miss it."""
        return self.spiked and (-slope + 0.5 * curvature > 0 or self.loss_watch.streak > 1)

    def net_factor(self, s_star: float | None) -> tuple[float, bool]:
        """The net's answer, a backtracking line search's: halved at least (``2^k`` on the
        ``k``-th spike in a row), down to ``sqrt(2) alpha*`` of this probe alone where that
        is lower (by ``max_factor**2`` at most on a first spike, or where the probe shows
        no descent; as far as the probe says once the divergence goes on), the next step
        probed; the probe stays out of the window (an outlier); ``(factor, fallback)``."""
        floor = 1.0 / self.max_factor**2 if self.max_factor is not None else 0.25
        cut = math.sqrt(2.0) * s_star if s_star is not None and s_star > 0 else floor
        if self.max_factor is not None and self.loss_watch.streak <= 1:
            cut = max(cut, floor)
        return min(cut, 0.5 ** max(self.loss_watch.streak, 1)), False

    def band_factor(self, slope: float, curvature: float, lr: float) -> tuple[float, bool]:
        """``(factor, fallback)`` of the band rule, this probe added to the window: the
        search's while it lasts, then the band's.

        Holding, with a margin of ``BAND_MARGIN`` standard errors around the window's
        ``alpha*``: when even the lowest ``alpha*`` the probes allow puts the Armijo step
        ``2 (1 - ARMIJO_C) alpha*`` above the unscaled lr, that lr rises to it (by
        ``max_factor`` at most); when even twice the highest is below the lr (the step
        raises the loss), the lr falls to ``sqrt(2)`` times the highest (by ``max_factor``
        at most); else it holds. A rise also needs ``MIN_PROBES`` probes at the current lr
        (``trial``) whose own Armijo step is above it, and ``window`` steps since the last
        move: each new lr proves itself before the next rise, and the lr doubles at most
        once per ``window`` steps, so that a climb outruns neither what the probes can see
        (on a valley floor, gradient descent's lr may look tiny along ``d`` while the steep
        walls already make it unstable) nor the first steps of a run, whose line search
        lies far above the lr that suits the rest of it and falls fast."""
        self.trial.add(slope, curvature, lr)
        if self.searching:  # its probes stay out of the window (the parabola's are local)
            return self.search_factor(slope, curvature, lr), False
        self.window.add(slope, curvature, lr)
        alpha, error = self.window.estimate()
        if len(self.window.samples) < LineSearchWindow.MIN_PROBES:
            # Warming up: a window that cannot rule the lr out is no reason to keep a start
            # nobody chose, so a probe that puts it twice above the edge (beyond a noisy
            # probe's reach) cuts as the search does.
            return self.backtrack(slope, curvature, lr, beyond=2.0), False
        if not finite(alpha):  # the mean curvature is not positive
            return 1.0, True
        low, high = alpha - BAND_MARGIN * error, alpha + BAND_MARGIN * error
        armijo = 2.0 * (1.0 - ARMIJO_C) * low
        # A rise also needs the probes at the current lr (MIN_PROBES of them) to put their
        # own Armijo step above it: the window's older probes lag a falling line search.
        alpha_now, _ = self.trial.estimate()
        waited = self.step_count - self.moved_at >= self.window.samples.maxlen
        if (armijo > self.base_lr() and 2.0 * (1.0 - ARMIJO_C) * alpha_now > self.base_lr()
                and waited and not self.spiked):  # never on a step that spiked the loss
            return self.clamped(armijo / self.base_lr()), False
        # Down to sqrt(2) alpha*, the middle of [alpha*, 2 alpha*], well below the edge where
        # a step along d would not lower a quadratic at all; from there it climbs back to the
        # Armijo step only on evidence.
        if 2.0 * high < lr:
            return self.clamped(max(math.sqrt(2.0) * high / lr, 0.0)), False
        return 1.0, False

    def search_factor(self, slope: float, curvature: float, lr: float) -> float:
        """The search's factor, probing every step: the first probe that shows a descent
        along ``d`` lands the lr at ``FIRST_LANDING alpha*``, up or down, as far as it says
        (``max_factor`` does not bound it: the initial lr is nobody's evidence); the later
        ones only cut (``backtrack``). For an optimizer whose state does not depend on the
        lr (SGD, AdamW, Adagrad, RMSprop), the first step per unit lr, and so that probe's
        ``alpha*``, are the same from every start, and so is the run after it. The search
        ends at the first probe after the landing that moves nothing from the third step
        on, or after a window of probes without a descent."""
        if not (slope > 0 and curvature > 0):  # no descent along d, or no curvature: no lr fits
            self.searching = len(self.trial.samples) < self.trial.samples.maxlen
            return 1.0
        if not self.landed:
            self.landed = True
            return FIRST_LANDING * slope / curvature
        factor = self.backtrack(slope, curvature, lr)
        # The first probe can't speak for the steps after it (momentum builds the step up
        # over the next ones): the search goes on for the first MIN_PROBES steps at least.
        self.searching = factor != 1.0 or self.step_count + 1 < LineSearchWindow.MIN_PROBES
        return factor

    def backtrack(self, slope: float, curvature: float, lr: float, beyond: float = 1.0) -> float:
        """Where a probe's own line search ``alpha*`` puts the lr ``beyond`` times above the
        band's top edge (``2 alpha* < lr``: the step raises the loss), the factor down to
        ``sqrt(2) alpha*`` (by ``max_factor**2`` at most: one noisy probe can't cut far), as
        a backtracking line search cuts; else 1."""
        alpha = slope / curvature * lr if slope > 0 and curvature > 0 else math.nan
        if not 2.0 * beyond * alpha < lr:
            return 1.0
        floor = 1.0 / self.max_factor**2 if self.max_factor is not None else 0.0
        return max(math.sqrt(2.0) * alpha / lr, floor)

    def clamped(self, factor: float) -> float:
        """``factor`` within ``[1/max_factor, max_factor]`` (no bound without ``max_factor``,
        but never zero: ``shrink`` then)."""
        if self.max_factor is not None:
            return min(max(factor, 1.0 / self.max_factor), self.max_factor)
        return factor if factor > 0 else self.shrink

    def bounded(self, factor: float) -> float:
        """``factor`` such that the unscaled lr of group 0 stays in ``[lr_min, lr_max]``."""
        base = self.base_lr()
        if base > 0:
            low = self.lr_min / base
            high = self.lr_max / base if self.lr_max is not None else math.inf
            factor = min(max(factor, low), high)
        return float(factor)

    def state_dict(self) -> dict[str, Any]:
        # No training data: a resumed loop that gives no probe_batch probes its first step
        # on the training batch (probe_source), having no previous one.
        return {**super().state_dict(), "base_lrs": list(self.base_lrs),
                "window": list(self.window.samples), "trial": list(self.trial.samples),
                "searching": self.searching, "landed": self.landed, "gap": self.gap,
                "moved_at": self.moved_at, "last_probe": self.last_probe,
                "loss_watch": self.loss_watch.state(), "account": dict(self.account),
                "last_measured": dict(self.last_measured)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.base_lrs = list(state["base_lrs"])
        for window, key in ((self.window, "window"), (self.trial, "trial")):
            window.samples.clear()
            window.samples.extend(tuple(sample) for sample in state[key])
        self.searching, self.moved_at = state["searching"], state["moved_at"]
        self.landed = state.get("landed", True)  # a checkpoint from before the landing
        watch = state["loss_watch"]  # four fields before it watched relative changes: re-warm
        self.loss_watch = LossWatch(*watch) if len(watch) == 5 else LossWatch(last=watch[0])
        self.account = Counter(state["account"])
        self.last_measured = dict(state["last_measured"])
        self.gap, self.last_probe = state["gap"], state["last_probe"]

    def summary_fields(self) -> dict[str, Any]:
        return {"lr_account": self.lr_account()}

    def lr_account(self) -> dict[str, Any]:
        """Which lr the rule picked and why, over the run: its own lr (before the horizon
        scale) at the start and now, how many probes, what each decided (landed by the
        search's first probe, rose, held or fell on the band's evidence, cut by the search's
        later probes or the net, fell back without a usable measurement), the training-loss
        spikes seen, and the last measurement."""
        decisions = ("landed", "rose", "held", "fell", "cut by the search", "netted", "fell back")
        return {"rule": self.rule, "initial_lr": self.initial_lr, "gen_lr": self.base_lr(),
                "scale": self.scale, "probes": self.account["probes"],
                **{key.replace(" ", "_"): self.account[key] for key in decisions},
                "loss_spikes": self.account["loss spikes"], **self.last_measured}

    def account_line(self) -> str:
        """The account in one line, for the end of a run's log."""
        a = self.lr_account()
        moves = ", ".join(f"{key.replace('_', ' ')} {a[key]}" for key in
                          ("landed", "rose", "held", "fell", "cut_by_the_search", "netted",
                           "fell_back")
                          if a[key])
        line = (f"lr {a['initial_lr']:.3g} -> {a['gen_lr']:.3g} ({self.rule}"
                f"{'' if self.scale == 'constant' else f', then x the {self.scale} scale'}): "
                f"{a['probes']} probes ({moves or 'none'})")
        if finite(a.get("window_alpha", math.nan), a.get("window_error", math.nan)):
            line += f"; the window's line search {a['window_alpha']:.3g} +- {a['window_error']:.2g}"
        if finite(a.get("s_star", math.nan)):
            line += f", the last probe's s* {a['s_star']:.3g}"
        return line
