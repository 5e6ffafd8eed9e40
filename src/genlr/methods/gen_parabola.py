"""Parabola GeN: the learning rate from a quadratic fitted to a few loss probes.

Bu & Xu, "Gradient descent with generalized Newton's method", ICLR 2025
(arXiv:2407.02772), the practical version: instead of ``d^T H d``, fit
``phi(s) = L(theta - s*d) ~ a + b s + c s^2`` to the loss at a few points along the
optimizer's step ``d`` (at ``s in {-1, 0, +1}`` by default, i.e. at minus one, zero and one
times the current lr); its vertex ``s* = -b / (2c)`` is the line-search step. Which lr
follows from it is the rule's business (``genlr.methods.gen_base``).
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import torch
from torch.utils import _pytree as pytree

from genlr.methods.base import as_float, finite
from genlr.methods.gen_base import GeNBase



def fit_parabola(s: list[float], losses: list[float]) -> tuple[float, float, float, float]:
    """Least-squares ``a + b s + c s^2`` through ``(s, losses)``; returns ``(a, b, c, r2)``.

    With three points this is the interpolating parabola (``r2 = 1``). Done in float64.
    """
    x = torch.tensor(s, dtype=torch.float64)
    y = torch.tensor(losses, dtype=torch.float64)
    if len(s) == 3:
        # Exact interpolation (Lagrange), robust for any three distinct points.
        (x0, x1, x2), (y0, y1, y2) = s, losses
        d01, d02, d12 = x0 - x1, x0 - x2, x1 - x2
        c = y0 / (d01 * d02) - y1 / (d01 * d12) + y2 / (d02 * d12)
        b = (y1 - y0) / (x1 - x0) - c * (x0 + x1)
        a = y0 - b * x0 - c * x0 * x0
        return float(a), float(b), float(c), 1.0
    design = torch.stack([torch.ones_like(x), x, x * x], dim=1)
    coef = torch.linalg.lstsq(design, y.unsqueeze(1)).solution.squeeze(1)
    residual = y - design @ coef
    total = ((y - y.mean()) ** 2).sum()
    r2 = 1.0 - float((residual**2).sum() / total) if float(total) > 0 else 1.0
    a, b, c = (float(v) for v in coef)
    return a, b, c, r2


class ParabolaGeN(GeNBase):
    """GeN from a fitted parabola (Bu & Xu, ICLR 2025, the practical version).

    On a probe step, the loss is probed (no-grad forwards, counted in
    ``passes["forward"]``) on the probe batch at ``theta - s d`` for ``s`` in ``points``
    (under the band spread towards the window's line search where it lies beyond them:
    ``stretch``),
    and ``a + b s + c s^2`` is fitted (slope ``-b``, curvature ``2c``). Two points may come
    free: with ``probe="same"``, ``L(0)`` is the training loss passed as ``loss``; with
    ``defer`` and a ``probe_batch`` given, ``L(+1)`` is the next step's training loss on that
    batch (the parameters stay at ``s = 1`` and the fit completes at the start of the next
    ``step``, before its update, which takes the new lr; if that step trains on another
    batch, ``L(+1)`` is probed then). Neither comes free when the model applies dropout,
    whose training loss is not the probes' function. The probe step and the rules are
    ``GeNBase``'s; the contract ``LRMethod``'s.

    Diagnostics: those of ``ExactGeN`` (no curvature path) plus ``r2`` (the fit's R^2) and
    ``search_points`` (the probes of a search down from an uphill step; 0 without one). Line profile: the real
    loss along ``d`` against the fitted parabola.

    Options (besides ``GeNBase``'s):
        points: probe positions in units of the current lr, at least three distinct values.
        r2_min: least R^2 of the fit to accept it (more than three points only).
        defer: take ``L(+1)`` from the next step's training loss when that step trains on
            the probe batch (needs ``+1`` in ``points``; not on steps that record a profile,
            nor while the band searches or tries an lr it has just moved to).
    """

    READ_WHEN = {
        **GeNBase.READ_WHEN,
        "r2_min": ("with more than three points", lambda o: len(o["points"]) > 3),
        "defer": ("with probe='next' and 1 in points",
                  lambda o: o["probe"] == "next" and 1.0 in o["points"]),
    }

    def __init__(self, optimizer, model=None, loss_fn=None, *,
                 points: list[float] = (-1.0, 0.0, 1.0), r2_min: float = 0.9,
                 defer: bool = True, **shared) -> None:
        self.check_options({**shared, **locals()})
        super().__init__(optimizer, model, loss_fn, **shared)
        if not 0.0 <= r2_min <= 1.0:
            raise ValueError(f"r2_min must be in [0, 1] (a fit's R^2), got {r2_min}")
        points = [float(p) for p in points]
        if len(set(points)) < 3 or len(set(points)) != len(points):
            raise ValueError(f"points must be at least three distinct values, got {points}")
        self.points, self.r2_min, self.defer = points, r2_min, defer
        self._deferred: dict[str, Any] | None = None

    def estimate(self, params, d, batch, same, loss):
        found = self.search(params, d, batch) if self.searching else None
        return found if found is not None else self.spread_fit(params, d, batch, same, loss)

    def spread_fit(self, params, d, batch, same, loss):
        """The fit through ``points`` spread by ``stretch``; while searching, one that shows
        a descent is looked at again: wider while its bend lies within float rounding (from
        a start far below the line search a quarter step is too short for the curvature to
        show: the CNN from x0.1 read exactly 0; a vertex in the rounding would land the lr
        anywhere), closer while it bends down, towards where the loss is convex (the LM
        from x10: slope 1.20, curvature -0.70 over a quarter of AdamW's step at 1e-2): a
        search that lands only at a later probe lands from parameters that differ by
        start. None when ``L(+1)`` is deferred."""
        stretch, widened = self.stretch(), False
        while True:
            losses = self.probe_points(params, d, batch, same, loss, stretch)
            if losses is None:  # completed at the next step (``complete_deferred``)
                return None
            s_star, diag, model = self.fit(losses)
            if not (self.searching and diag.get("slope", math.nan) > 0):
                return s_star, diag, model
            rounding = self.rounding(params, *losses.values())
            spread = stretch * max(map(abs, self.points))
            if abs(diag["curvature"]) / 2.0 * spread**2 <= rounding:  # no bend to see here
                if stretch >= self.SEARCH_SPREAD * 4.0**self.SEARCH_STEPS:
                    return None, diag, model  # a vertex in the rounding is no evidence
                stretch, widened = stretch * 4.0, True
            elif (diag["curvature"] > 0 or widened
                  or stretch <= self.SEARCH_SPREAD / 4.0**self.SEARCH_STEPS):
                return s_star, diag, model
            else:
                stretch /= 4.0

    def probe_points(self, params, d, batch, same: bool, loss,
                     stretch: float) -> dict[float, float] | None:
        """The losses at ``points`` times ``stretch`` (two of which may come free), the
        parameters back at ``s = 1``; None when ``L(+1)`` is deferred to the next step."""
        # Two points may come free: phi(0) is the training loss with probe="same", and
        # phi(1) the next step's training loss when it trains on the probe batch at s = 1
        # (where the optimizer's step leaves us; ``defer``), unless this step tries an lr
        # the band has just moved to, which is measured before the step is taken. Both
        # only if the training forward applies no dropout, which the other probes have
        # found out by then.
        points = [p * stretch for p in self.points]
        free = {0.0: same and loss is not None,
                1.0: self.defer and self.probes_next_batch()
                and not self.profile_due() and not self.checking() and stretch == 1.0}
        losses: dict[float, float] = {}
        at = 1.0

        def probe(s: float) -> None:
            nonlocal at
            self.shift(params, d, s, current=at)
            at = s
            losses[s] = self.probe_loss(batch)

        for s in sorted(points, key=lambda p: abs(p - 1.0)):  # start where we are
            if not free.get(s):
                probe(s)
        dropout = self.applies_dropout()
        if free[0.0] and 0.0 in points:
            if dropout:
                probe(0.0)
            else:
                losses[0.0] = self.batch_mean(as_float(loss))
        defer = free[1.0] and 1.0 in points and not dropout
        if free[1.0] and 1.0 in points and not defer:
            probe(1.0)
        self.shift(params, d, 1.0, current=at)
        if defer:
            losses[1.0] = math.nan
            self._deferred = {"losses": losses, "batch": batch, "digest": batch_digest(batch)}
            return None
        return losses

    #: the probes spread at most this many times ``points``; while searching, this
    STRETCH_MAX, SEARCH_SPREAD = 16.0, 0.25

    def stretch(self) -> float:
        """How far this probe's points spread, as a multiple of ``points``: under the band,
        ``SEARCH_SPREAD`` while searching, then towards the window's line search where it
        lies beyond them (``STRETCH_MAX`` at most); else 1. The search asks whether the lr
        is above the edge of the *local* quadratic model (the exact variant's), which a
        parabola over a step too long for it does not see: a fresh language model's loss
        falls and flattens along AdamW's first step at 10x its lr. A parabola through
        points far inside its vertex reads the curvature off a nearly straight stretch of
        loss, in the noise of the batch: from an lr far below the line search its window
        could never show the lr too low."""
        if self.rule != "band" or not self.last_lr > 0:
            return 1.0
        if self.searching:
            return self.SEARCH_SPREAD
        alpha, _ = self.window.estimate(min_probes=1)
        return min(max(alpha / self.last_lr, 1.0), self.STRETCH_MAX) if finite(alpha) else 1.0

    #: how far the search goes down from an uphill step, and its look at a first probe
    #: without a vertex up or down: 4**12 = 1.7e7 times
    SEARCH_STEPS = 12
    #: loss differences within this many float rounding units of phi(0) are no evidence
    ROUNDING_ULPS = 256

    def rounding(self, params, *losses: float) -> float:
        """The loss difference below which probes at ``losses`` show nothing: ``ROUNDING_ULPS``
        rounding units of the parameters' float type at the largest of them."""
        return self.ROUNDING_ULPS * torch.finfo(params[0].dtype).eps * max(map(abs, losses))

    def search(self, params, d, batch) -> tuple[float | None, dict[str, float], Any] | None:
        """While the band searches, a step that goes uphill (``phi(1) > phi(0)``) may be far
        past the minimum along ``d``, where a parabola through ``s in {-1, 0, 1}`` says
        nothing: from ``s = 1`` down by steps of x4 until a point lies below ``phi(0)``,
        then the parabola through the three points around it. None (probe as usual) when
        the step goes downhill, or when the points come within float rounding of ``phi(0)``
        before one lies below it (a direction uphill on this batch ends so: its rise
        shrinks with ``s``, where a step past the minimum turns to a fall); a difference in
        the rounding is no evidence (issue 26: it took the lr to 1e-11); ends at ``s = 1``."""
        at = 1.0

        def phi(s: float) -> float:
            nonlocal at
            self.shift(params, d, s, current=at)
            at = s
            return self.probe_loss(batch)

        def done(result):
            self.shift(params, d, 1.0, current=at)
            return result

        f0, f1 = phi(0.0), phi(1.0)
        if not finite(f0):
            return done((None, {"r2": math.nan, "nonfinite_probe": 1.0}, None))
        rounding = self.rounding(params, f0)
        if finite(f1) and f1 <= f0 + rounding:
            return done(None)
        points = [(0.0, f0), (1.0, f1)]
        for _ in range(self.SEARCH_STEPS):
            s = points[1][0] / 4.0
            points.insert(1, (s, phi(s)))
            s1, y1 = points[1]
            if not finite(y1):
                continue
            if abs(y1 - f0) <= rounding:  # an uphill slope ends here too
                return done(None)
            if y1 < f0:
                break
        else:
            return done(None)
        (s0, y0), (s1, y1), (s2, y2) = points[:3]
        a, b, c, _ = fit_parabola([s0, s1, s2], [y0, y1, y2])
        good = c > 0 and finite(a, b, c)
        diag = {"slope": -b, "curvature": 2.0 * c, "r2": math.nan, "nonfinite_probe": 0.0,
                "search_points": float(len(points))}
        model = (lambda s: b * s + c * s * s) if finite(a, b, c) else None
        return done(((-b / (2.0 * c) if good else None), diag, model))

    def complete_deferred(self, batch, loss) -> bool:
        if self._deferred is None:
            return False
        deferred, self._deferred = self._deferred, None
        losses, probed = deferred["losses"], deferred.get("batch")
        if loss is not None and (batch is probed or batch_digest(batch) == deferred["digest"]):
            losses[1.0] = self.batch_mean(as_float(loss))
        elif probed is not None:  # trained on another batch: still at s = 1, probe there
            losses[1.0] = self.probe_loss(probed)
        else:  # resumed, and trained on another batch, which a checkpoint does not hold
            return False
        s_star, diag, _ = self.fit(losses)
        self.scale_lrs(self.adopt(s_star, diag))
        return True

    def fit(self, losses: dict[float, float]) -> tuple[float | None, dict[str, float], Any]:
        """``(s*, diagnostics, model)`` from the losses at the probed points."""
        points = sorted(losses)
        ys = [losses[s] for s in points]
        if not finite(*ys):
            return None, {"r2": math.nan, "nonfinite_probe": 1.0}, None
        a, b, c, r2 = fit_parabola(points, ys)
        fits = len(points) == 3 or r2 >= self.r2_min
        # A fit below r2_min measures nothing: no slope or curvature for the rule to use.
        diag = {"slope": -b if fits else math.nan, "curvature": 2.0 * c if fits else math.nan,
                "r2": r2, "nonfinite_probe": 0.0, "search_points": 0.0}
        good = c > 0 and finite(a, b, c) and fits
        s_star = -b / (2.0 * c) if good else None
        model = (lambda s: b * s + c * s * s) if finite(a, b, c) else None
        return s_star, diag, model

    def state_dict(self) -> dict[str, Any]:
        # No training data in a checkpoint: the probe batch goes as its digest.
        deferred = self._deferred and {k: v for k, v in self._deferred.items() if k != "batch"}
        return {**super().state_dict(), "deferred": deferred}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._deferred = state.get("deferred")


def batch_digest(batch: Any) -> str:
    """A digest of a batch's data (its tensors' bytes, shapes and dtypes, its other leaves'
    reprs): equal for the same data wherever it lies, so that a checkpoint need not hold
    the batch to recognise it."""
    digest = hashlib.sha256()
    leaves, spec = pytree.tree_flatten(batch)
    digest.update(str(spec).encode())
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            digest.update(f"{tuple(leaf.shape)}{leaf.dtype}".encode())
            digest.update(leaf.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        else:
            digest.update(repr(leaf).encode())
    return digest.hexdigest()
