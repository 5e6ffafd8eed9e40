"""Exact directional derivatives of the training loss along an update direction.

With ``phi(s) = L(theta - s*d)`` the GeN step needs ``phi'(0) = -<g, d>`` and
``phi''(0) = d^T H d``. This module computes both exactly -- no finite differences -- by
one of three paths, tried in this order (``curvature="auto"``):

``taylor``
    Second-order Taylor-mode forward propagation (a "jet") of ``theta + s*d`` through a
    trace of the loss (``genlr.curvature.taylor``): no backward pass and no tape. The fastest.
``double_backward``
    Reverse over reverse: ``g = grad(L)`` with a graph, then ``Hd = grad(<g, d>)``.
``forward_over_reverse``
    ``torch.func.jvp`` of ``torch.func.grad``.

A path that fails for a model (an op without a rule or derivative, a trace that breaks,
running out of memory) is not tried again for it; one warning says why, and the next path
takes over. When none works the result is NaN, which the GeN methods turn into their
fallback (the learning rate is kept). The Taylor pass is checked against the first
reference path that works, on a few examples of the first batch it sees (and every
``check_every``-th time after, if set), the way ``torch.autograd.gradcheck`` checks a
gradient: on disagreement it is dropped for this model, with a warning giving both values.

The Taylor pass runs compiled where the loss is one graph (``genlr.curvature.taylor``), and
the check also compares it with the same graph interpreted, and, under autocast, its low
precision with float32 (``DirectionalDerivatives._check``).

Every path evaluates the loss under ``probe_mode`` (BatchNorm normalises with the batch
statistics and writes no buffer, every dropout off, RNG untouched), the training autocast,
and on the model's eager code (a compiled model's original module: same weights).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections import Counter
from typing import Any, Callable, Iterator

import torch
from torch import nn

from genlr.messages import one_line
from genlr.curvature.probe import LossFn, probe_mode
from genlr.curvature.taylor import TaylorPass, eager_math_kernels

PATHS = ("taylor", "double_backward", "forward_over_reverse")
#: examples of the batch the Taylor pass is checked on
CHECK_EXAMPLES = 8
#: largest disagreement of the check, relative to max(|slope|, |curvature|) (``s`` is in
#: units of the optimizer's step, so both are in units of the loss), by parameter dtype
#: (5e-2 for half precisions)
CHECK_TOLERANCE = {torch.float64: 1e-6, torch.float32: 1e-3}
#: Under autocast the Taylor pass's low-precision result may differ from the float32 one by
#: what the precision's rounding does to the forward: it passes if within this many times
#: the disagreement of a reference path run under the same autocast, and at least within
#: ``LOW_PRECISION_ULPS`` units of the precision's epsilon (bf16: 0.125, fp16: 0.016).
PRECISION_SLACK = 4.0
LOW_PRECISION_ULPS = 16


def batch_fraction(batch: Any, fraction: float | None) -> Any:
    """The first ``ceil(fraction * n)`` examples of every tensor in ``batch`` that has a
    leading batch dimension ``n`` (tuples, lists and dicts are walked). ``None`` or ``1``
    returns ``batch`` itself."""
    if fraction is None or fraction >= 1.0:
        return batch
    if not 0.0 < fraction:
        raise ValueError(f"a batch fraction must be in (0, 1], got {fraction}")
    n = batch_size(batch)
    return first_examples(batch, max(1, math.ceil(fraction * n))) if n else batch


def batch_size(batch: Any) -> int:
    """The largest leading dimension of the tensors in ``batch`` (0 if none)."""
    sizes = [x.shape[0] for x in torch.utils._pytree.tree_leaves(batch)
             if isinstance(x, torch.Tensor) and x.dim() > 0]
    return max(sizes, default=0)


@contextlib.contextmanager
def full_float32() -> Iterator[None]:
    """float32 matmuls and convolutions without TF32, which users often switch on for
    training: its 10-bit mantissa would swamp the check's tolerance."""
    cuda, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    if hasattr(cudnn, "conv"):  # torch >= 2.9: the per-backend precision switches
        switches, name, full = [cuda, cudnn.conv, cudnn.rnn], "fp32_precision", "ieee"
    else:
        switches, name, full = [cuda, cudnn], "allow_tf32", False
    saved = [getattr(switch, name) for switch in switches]
    for switch in switches:
        setattr(switch, name, full)
    try:
        yield
    finally:
        for switch, value in zip(switches, saved):
            setattr(switch, name, value)


def first_examples(batch: Any, keep: int) -> Any:
    """The first ``keep`` examples of every tensor in ``batch`` with the batch's size as
    its leading dimension."""
    n = batch_size(batch)

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


def original_module(model: nn.Module) -> nn.Module:
    """The module behind ``torch.compile(model)`` (the same parameters), else ``model``."""
    return getattr(model, "_orig_mod", model)


def dot(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> float:
    """``sum_i <xs[i], ys[i]>`` accumulated in float64, one host sync."""
    if not xs:
        return 0.0
    parts = []
    for x, y in zip(xs, ys):
        if x.dtype in (torch.float16, torch.bfloat16) or y.dtype != x.dtype:
            x, y = x.float(), y.float()
        parts.append(torch.dot(x.reshape(-1), y.reshape(-1)).double())
    return float(torch.stack(parts).sum())


class BoundLoss(nn.Module):
    """``loss_fn(model, batch)`` as a module, so that ``torch.func.functional_call`` can swap
    the model's parameters for the duration of a loss evaluation."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Any) -> torch.Tensor:
        return self.loss_fn(self.model, batch)


class CurvatureMismatch(RuntimeError):
    """Two exact paths disagreed on the check."""


def result_tolerance(param_dtype: torch.dtype | None, autocast: Callable) -> float:
    """How far a result may be from an exact one: ``CHECK_TOLERANCE`` for the parameters'
    precision, or under ``autocast`` (a context factory) what its dtype's rounding allows."""
    with autocast():
        low = [torch.get_autocast_dtype(device) for device in ("cuda", "cpu")
               if torch.is_autocast_enabled(device)]
    if low:
        return LOW_PRECISION_ULPS * torch.finfo(low[0]).eps
    return CHECK_TOLERANCE.get(param_dtype, 5e-2)


def _disagreement(x: tuple[float, float], y: tuple[float, float]) -> float:
    """Largest difference of slope and curvature relative to ``max(|y|)`` (NaN: inf)."""
    error = max(abs(a - b) for a, b in zip(x, y)) / max(abs(y[0]), abs(y[1]), 1e-30)
    return error if math.isfinite(error) else math.inf


class DirectionalDerivatives:
    """``<grad L, d>`` and ``d^T H d`` of ``loss_fn(model, batch)`` at the current parameters.

    Args:
        model, loss_fn: the training model (compiled or not) and loss
            (``loss_fn(model, batch) -> scalar``; it must use the model it is given).
        autocast: zero-argument factory of the training autocast context.
        check_every: check the Taylor pass against a reference path on its first use and,
            if > 0, every ``check_every``-th use after (and a compiled pass against the
            same graph interpreted on its first use).
        passes_left: the passes the run still expects (``TaylorPass``: compile the jet
            once that pays for itself; None: at once).

    Attributes (what the last ``derivatives`` call did, for diagnostics):
        path: the path that gave the result, or "none" when none could.
        taylor_mode: how the last Taylor pass ran ("compiled", "interpreted", "eager";
            see ``genlr.curvature.taylor``).
        counts: results per path (``"none"`` included) over this object's life.
        unavailable: path -> why it can't be used for this model.
        check_error: the Taylor pass's disagreement at its last check (NaN: not checked).
        precision_error: under autocast, the low-precision Taylor pass's disagreement with
            the float32 reference at its last check (NaN: not checked).
        taylor_autocast: whether the Taylor pass runs under the training autocast (False
            once the check found it off by more than the precision explains).
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn,
                 autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
                 check_every: int = 0, passes_left: Callable[[], float] | None = None) -> None:
        self.model = original_module(model)
        self.loss_fn = loss_fn
        self.autocast = autocast or contextlib.nullcontext
        self.check_every = check_every
        self._bound = BoundLoss(self.model, loss_fn)
        self._taylor_pass = TaylorPass(self._bound, passes_left=passes_left)
        self.path = ""
        self.taylor_mode = ""
        self.counts: Counter[str] = Counter()
        self.unavailable: dict[str, str] = {}
        self.check_error = math.nan
        self.precision_error = math.nan
        self.taylor_autocast = True
        self._checks = 0
        self._compiled_checked = False

    # ----------------------------------------------------------------------- dispatch
    def derivatives(self, params: list[torch.Tensor], d: list[torch.Tensor], batch: Any,
                    mode: str = "auto") -> tuple[float, float]:
        """``(<grad L, d>, d^T H d)`` at the current parameters on ``batch``: the first and
        second derivative of ``L(theta + s*d)`` at 0 (floats; NaN when no path works).

        ``mode`` "auto" takes the first path that works (and checks the Taylor pass); a
        path's name takes that path alone and lets its errors through."""
        if mode != "auto" and mode not in PATHS:
            raise ValueError(f"curvature mode must be 'auto' or one of {PATHS}, got {mode!r}")
        if mode != "auto":
            self.path = mode
            value = self.run(mode, params, d, batch)
            if mode == "taylor":
                self.taylor_mode = self._taylor_pass.mode
            return value
        for path in PATHS:
            if path in self.unavailable:
                continue
            try:
                value = self.run(path, params, d, batch)
                if path == "taylor":
                    self.taylor_mode = self._taylor_pass.mode
                    if self._check_due():
                        value = self._check(params, d, batch, value)
                    elif self.taylor_mode == "compiled" and not self._compiled_checked:
                        value = self._check_compiled(params, d, batch, value)  # compiled late
            except Exception as err:  # this path can't, for this model: the next one takes over
                self._give_up(path, err)
                continue
            self.path = path
            self.counts[path] += 1
            return value
        self.path = "none"
        self.counts["none"] += 1
        return math.nan, math.nan

    def curvature(self, params: list[torch.Tensor], d: list[torch.Tensor], batch: Any,
                  mode: str = "auto") -> float:
        """``d^T H d`` at the current parameters (float; may be non-finite or negative)."""
        return self.derivatives(params, d, batch, mode)[1]

    def run(self, path: str, params, d, batch, autocast: bool = True,
            compile: bool = True) -> tuple[float, float]:
        """One path, errors included (``autocast=False``: in the parameters' precision;
        ``compile=False``: the Taylor pass interpreted)."""
        if path not in PATHS:
            raise ValueError(f"curvature path must be one of {PATHS}, got {path!r}")
        if path == "taylor" and not self.taylor_autocast:
            autocast = False
        precision = self.autocast() if autocast else contextlib.nullcontext()
        with torch.no_grad(), probe_mode(self.model), precision:
            if path == "taylor":
                return self._taylor(params, d, batch, compile)
            return getattr(self, f"_{path}")(params, d, batch)

    def _give_up(self, path: str, err: Exception) -> None:
        reason = one_line(err)
        self.unavailable[path] = reason
        left = [p for p in PATHS if p not in self.unavailable]
        then = f"paths left: {', '.join(left)}" if left else \
            "no exact path is left: the learning rate stays where it is (method/fallback=1)"
        warnings.warn(f"curvature path {path} can't be used for this model ({reason}); {then}",
                      RuntimeWarning, stacklevel=3)

    # ---------------------------------------------------------------------- the check
    def _check_due(self) -> bool:
        return self._checks == 0 or (self.check_every > 0
                                     and self.counts["taylor"] % self.check_every == 0)

    def _check(self, params, d, batch, full: tuple[float, float]) -> tuple[float, float]:
        """Checks what the Taylor pass computed (``full``, on the whole batch) and returns
        the result to use. Three questions, each against an independent answer:

        * the rules, on this model: the pass interpreted, on a few examples, in the
          parameters' own precision (no autocast, no TF32: on a few examples a low
          precision's rounding can swamp small derivatives), against the first reference
          path that works. When the two disagree, a third opinion (the other reference
          path, else a central difference of gradients) says which one is wrong: exact paths
          have bugs too (in torch 2.14 double backward through ``torch._weight_norm`` gives a
          wrong curvature). With no exact reference at all, the difference of gradients is
          the reference, with a ten times looser tolerance. Raises ``CurvatureMismatch``
          when the Taylor pass is the one that is wrong.
        * the compilation: a compiled pass against the same graph interpreted, on the same
          batch (compilers have bugs too: torch 2.14's inductor computes ``add(mm, mm,
          alpha=2)`` as if alpha were 1). On disagreement the pass runs interpreted from now
          on, and this result is the interpreted one.
        * the precision, under autocast: the pass under the training autocast, on the same
          few examples, against the float32 reference, within what that precision's
          rounding explains (``_check_precision``). Beyond it, the pass runs in the
          parameters' precision from now on.

        The few examples are the whole batch when they can't be cut out of it (a batch of
        bags with offsets, say)."""
        self._checks += 1
        if self.taylor_mode == "compiled":  # in the precision the pass ran in (TF32 or not)
            full = self._check_compiled(params, d, batch, full)
        with full_float32():
            return self._check_rules(params, d, batch, full)

    def _check_rules(self, params, d, batch, full: tuple[float, float]) -> tuple[float, float]:
        sub = first_examples(batch, CHECK_EXAMPLES)
        try:
            taylor = self.run("taylor", params, d, sub, autocast=False, compile=False)
        except Exception:
            sub = batch
            taylor = self.run("taylor", params, d, sub, autocast=False, compile=False)
        opinions = self._opinions(params, d, sub)
        name, reference, tolerance = next(opinions)
        if not all(map(math.isfinite, reference)):  # nothing to learn here: check next time
            self._checks -= 1
            return full
        self.check_error = _disagreement(taylor, reference)
        exact = self._float64_disagreement(params, d, sub, name) \
            if self.check_error > tolerance else None
        if exact is not None and exact <= CHECK_TOLERANCE[torch.float64]:
            self.check_error = tolerance  # the two agree: what they disagreed by was rounding
        elif self.check_error > tolerance:
            referee_name, referee, _ = next(opinions, (None, None, None))
            if referee is None or _disagreement(taylor, referee) >= _disagreement(reference, referee):
                raise CurvatureMismatch(
                    f"the Taylor pass disagrees with {name} on {CHECK_EXAMPLES} examples: slope "
                    f"{taylor[0]:.6g} vs {reference[0]:.6g}, curvature {taylor[1]:.6g} vs "
                    f"{reference[1]:.6g}" + ("" if referee is None else f" ({referee_name}: {referee[1]:.6g})"))
            self.check_error = _disagreement(taylor, referee)
            self._give_up(name, CurvatureMismatch(
                f"it disagrees with the Taylor pass and {referee_name}: curvature "
                f"{reference[1]:.6g} vs {taylor[1]:.6g} and {referee[1]:.6g}"))
            name, reference = referee_name, referee
        if self.taylor_autocast and self._autocasts():
            self._check_precision(params, d, sub, reference, name)
            if not self.taylor_autocast:  # ``full`` was in that precision too
                return self.run("taylor", params, d, batch)
        return full

    def _float64_disagreement(self, params, d, sub, name: str) -> float | None:
        """The Taylor pass's disagreement with path ``name`` on ``sub`` with the model in
        float64 for the time (its float32 values are exact there and come back exactly):
        with deep BatchNorm stacks float32 rounding alone separates the paths by more than
        the check's tolerance (the zoo's ResNet-18: float32 double backward 1.3e-3 off the
        float64 curvature, the Taylor pass 4e-4), where in float64 they agree to 1e-12 unless
        one of them is wrong. None when the parameters are not float32 or a path can't."""
        if name not in PATHS:
            return None
        return self._in_float64(params, d, sub, lambda d64, wide: _disagreement(
            self._float64_taylor(params, d64, wide), self.run(name, params, d64, wide, autocast=False)))

    def _float64_taylor(self, params, d64, wide) -> tuple[float, float]:
        scratch = TaylorPass(self._bound, compile=False)  # this pass's graphs stay float32
        with torch.no_grad(), probe_mode(self.model), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return scratch(params, d64, wide)

    def _in_float64(self, params, d, sub, measure: Callable[[list, Any], Any]) -> Any:
        """``measure(d, sub)`` with the model, ``d`` and ``sub`` in float64 for the time;
        None when the parameters are not float32 or the measurement fails."""
        if not params or params[0].dtype != torch.float32:
            return None
        tensors = [t for t in [*self.model.parameters(), *self.model.buffers()] if t.is_floating_point()]
        dtypes = [t.dtype for t in tensors]
        grads = [p.grad for p in params]
        wide = torch.utils._pytree.tree_map(
            lambda x: x.double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x, sub)
        try:
            with torch.no_grad():
                for p in params:
                    p.grad = None
                for t in tensors:
                    t.data = t.data.double()
            return measure([v.double() for v in d], wide)
        except Exception:
            return None
        finally:
            with torch.no_grad():
                for t, dtype in zip(tensors, dtypes):
                    t.data = t.data.to(dtype)
                for p, g in zip(params, grads):
                    p.grad = g

    def _check_compiled(self, params, d, batch, compiled: tuple[float, float]) -> tuple[float, float]:
        self._compiled_checked = True
        interpreted = self.run("taylor", params, d, batch, compile=False)
        if not all(map(math.isfinite, interpreted)):  # nothing to learn here
            return compiled
        error = _disagreement(compiled, interpreted)
        tolerance = result_tolerance(params[0].dtype if params else None, self.autocast)
        if error <= tolerance:
            return compiled
        # Deep BatchNorm stacks round apart by more than the tolerance in float32: the
        # compiled pass stands if it is as close to the float64 values as the interpreted one.
        exact = self._in_float64(params, d, batch, lambda d64, wide: self._float64_taylor(params, d64, wide))
        if exact is not None and not self._autocasts() and \
                _disagreement(compiled, exact) <= _disagreement(interpreted, exact) + tolerance:
            return compiled
        self._taylor_pass.compile = False
        warnings.warn(f"Taylor pass: the compiled pass disagrees with the same graph interpreted "
                      f"(slope {compiled[0]:.6g} vs {interpreted[0]:.6g}, curvature "
                      f"{compiled[1]:.6g} vs {interpreted[1]:.6g}); it runs interpreted from "
                      "now on", RuntimeWarning, stacklevel=4)
        return interpreted

    def _check_precision(self, params, d, sub, reference: tuple[float, float], name: str) -> None:
        """The Taylor pass under the training autocast on ``sub`` against the float32
        ``reference`` (from path ``name``): it passes within ``PRECISION_SLACK`` times the
        disagreement of that reference path run under the same autocast (the precision's
        own rounding on this model and direction), and at least within
        ``LOW_PRECISION_ULPS`` epsilons of the precision."""
        low = self.run("taylor", params, d, sub, compile=False)
        tolerance = LOW_PRECISION_ULPS * torch.finfo(self._autocast_dtype()).eps
        if name in PATHS:
            try:
                rounding = _disagreement(self.run(name, params, d, sub), reference)
                tolerance = max(tolerance, PRECISION_SLACK * rounding)
            except Exception:  # the reference under autocast can't: the floor alone
                pass
        self.precision_error = _disagreement(low, reference)
        if self.precision_error <= tolerance:
            return
        self.taylor_autocast = False
        warnings.warn(f"Taylor pass: under {self._autocast_dtype()} autocast it is off by "
                      f"{self.precision_error:.3g} of the float32 value on {CHECK_EXAMPLES} "
                      f"examples (the precision explains {tolerance:.3g}): it runs in the "
                      "parameters' precision from now on", RuntimeWarning, stacklevel=4)

    def _tolerance(self, params) -> float:
        return CHECK_TOLERANCE.get(params[0].dtype if params else None, 5e-2)

    def _autocast_dtype(self) -> torch.dtype:
        with self.autocast():
            for device in ("cuda", "cpu"):
                if torch.is_autocast_enabled(device):
                    return torch.get_autocast_dtype(device)
        return torch.float32

    def _autocasts(self) -> bool:
        with self.autocast():
            return torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda")

    def _opinions(self, params, d, batch) -> Iterator[tuple[str, tuple[float, float], float]]:
        """``(name, (slope, curvature), tolerance)`` of the reference paths that work, in
        order, then of a central difference of gradients (numerical: ten times the
        tolerance)."""
        tolerance = self._tolerance(params)
        for path in PATHS[1:]:
            if path in self.unavailable:
                continue
            try:
                yield path, self.run(path, params, d, batch, autocast=False), tolerance
            except Exception as err:
                self._give_up(path, err)
        yield "a difference of gradients", self._gradient_difference(params, d, batch), 10 * tolerance

    def _gradient_difference(self, params, d, batch) -> tuple[float, float]:
        """``<g, d>`` and the central difference of ``<g(theta + s d), d>`` at ``s = 0``,
        with the step that balances rounding and truncation errors."""
        h = torch.finfo(params[0].dtype).eps ** (1 / 3) if params else 1e-3
        saved = [p.detach().clone() for p in params]

        def slope_at(s: float) -> float:
            with torch.no_grad():
                torch._foreach_add_(params, d, alpha=s)
            try:
                with torch.enable_grad(), probe_mode(self.model), eager_math_kernels():
                    grads = torch.autograd.grad(self.loss_fn(self.model, batch), params,
                                                allow_unused=True)
            finally:
                with torch.no_grad():
                    torch._foreach_copy_(params, saved)
            used = [(g, v) for g, v in zip(grads, d) if g is not None]
            return dot([g for g, _ in used], [v for _, v in used])

        return slope_at(0.0), (slope_at(h) - slope_at(-h)) / (2 * h)

    # ------------------------------------------------------------------------ paths
    def _taylor(self, params, d, batch, compile: bool = True) -> tuple[float, float]:
        self._names(params)  # the optimizer's tensors are the model's
        return self._taylor_pass(params, d, batch, compile)

    def _double_backward(self, params, d, batch) -> tuple[float, float]:
        with torch.enable_grad(), eager_math_kernels():
            loss = self.loss_fn(self.model, batch)
            grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
            pairs = [(g, v) for g, v in zip(grads, d) if g is not None]
            gd = sum((g * v.to(g.dtype)).sum() for g, v in pairs)
            if not isinstance(gd, torch.Tensor) or not gd.requires_grad:
                return float(gd), 0.0
            hd = torch.autograd.grad(gd, params, allow_unused=True)
        used = [(h, v) for h, v in zip(hd, d) if h is not None]
        return float(gd.detach()), dot([h for h, _ in used], [v for _, v in used])

    def _forward_over_reverse(self, params, d, batch) -> tuple[float, float]:
        names = self._names(params)
        primals = tuple(p.detach() for p in params)

        def loss_of(*ps):
            return torch.func.functional_call(self._bound, dict(zip(names, ps)), (batch,),
                                              strict=False)

        grad_fn = torch.func.grad(loss_of, argnums=tuple(range(len(params))))
        with torch.enable_grad(), eager_math_kernels():
            g, hd = torch.func.jvp(grad_fn, primals, tuple(d))
        return dot(list(g), d), dot(list(hd), d)

    def _names(self, params: list[torch.Tensor]) -> list[str]:
        """Names of ``params`` in the bound loss module (``model.<name>``)."""
        by_id = {id(p): f"model.{n}" for n, p in self.model.named_parameters()}
        missing = [i for i, p in enumerate(params) if id(p) not in by_id]
        if missing:
            raise ValueError("the optimizer holds tensors that are not the model's parameters")
        return [by_id[id(p)] for p in params]
