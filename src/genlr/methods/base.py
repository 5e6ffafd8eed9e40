"""The step protocol every learning-rate method follows, and the machinery it shares.

A method replaces ``optimizer.step()`` in a training loop::

    optimizer.zero_grad()
    loss = loss_fn(model, batch)
    loss.backward()
    lr = method.step(batch, loss=loss)

The shared machinery (docs/design.md, "The data flow of one step"):

* ``apply_update()`` -- the base optimizer's ``step()`` through the AMP ``GradScaler`` if
  there is one. It is called exactly once per training step, so the optimizer's state
  (moments, step counters) advances once.
* ``capture_direction()`` -- snapshot theta, ``apply_update()``, and return the step
  ``d = theta_before - theta_after`` that the optimizer took at the current learning rates.
* ``place(d, s)`` -- move to ``theta_before - s * d`` and scale every group's ``lr`` by
  ``s`` (group ratios preserved). Valid because the supported optimizers' updates are
  linear in ``lr`` (``check_linear_in_lr``).
* ``probe_loss(batch)`` -- a no-grad loss under the training autocast, with BatchNorm
  running statistics restored afterwards, dropout off and the global RNG untouched.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from collections.abc import Mapping
from typing import Any, Callable

import torch
from torch import nn

from genlr.curvature import LossFn, dot, has_active_dropout, probe_mode
from genlr.distributed import mean_over_ranks
from genlr.line_profile import LineProfile
from genlr.options import SettingError, check_options, options_of


# Optimizers whose step is exactly linear in ``lr`` (the weight decay of AdamW included),
# so that a step taken at lr and rescaled by s equals the step taken at s*lr.
LINEAR_IN_LR = (
    torch.optim.SGD,
    torch.optim.Adam,
    torch.optim.AdamW,
    torch.optim.RMSprop,
    torch.optim.Adagrad,
    torch.optim.Adamax,
    torch.optim.NAdam,
    torch.optim.RAdam,
)


class IncompatibleOptimizerError(ValueError):
    """The optimizer cannot be driven by this method (its step is not linear in lr)."""


def check_linear_in_lr(optimizer: torch.optim.Optimizer, method: str) -> None:
    """Raise a one-line error unless ``optimizer``'s update is known to be linear in lr."""
    if not isinstance(optimizer, LINEAR_IN_LR):
        allowed = ", ".join(cls.__name__ for cls in LINEAR_IN_LR)
        raise IncompatibleOptimizerError(
            f"{method} rescales the optimizer's step, which needs an update linear in lr; "
            f"{type(optimizer).__name__} is not (use one of: {allowed})"
        )


def check_positive_lr(optimizer: torch.optim.Optimizer, method: str) -> None:
    """Raise a one-line error unless every group starts from a positive lr: a method that
    rescales the optimizer's step learns nothing from a step of zero."""
    lowest = min(g["lr"] for g in optimizer.param_groups)
    if not lowest > 0:
        raise SettingError(f"optimizer.lr={lowest}: {method} rescales the optimizer's step, "
                         f"which is zero at lr 0; start from a positive lr")


class LRMethod:
    """Decides how big each optimizer step is, and applies it.

    Contract, for every method:

    * Call ``step(batch, loss=loss)`` after ``loss.backward()`` instead of
      ``optimizer.step()``. It advances the optimizer's state exactly once and returns the
      learning rate of group 0 after the step.
    * After ``step``, each ``optimizer.param_groups[i]["lr"]`` holds the method's current
      learning rate, so any logger that reads the optimizer sees the truth.
    * Probes (extra forward passes) leave BatchNorm running statistics, the dropout RNG and
      ``.grad`` as they were; extra passes are counted in ``passes``.
    * ``diagnostics`` holds what the method saw at its last step (floats), for ``method/*``.
    * ``state_dict()`` / ``load_state_dict()`` round-trip everything needed to resume.

    Args:
        optimizer: the base optimizer; its ``step()`` gives the update direction.
        model, loss_fn: needed by methods that probe the loss (``loss_fn(model, batch)``
            returns a scalar); baselines ignore them.
        total_steps: training horizon, for schedules and horizon-aware scales.
        scaler: an optional ``torch.amp.GradScaler``; the loss was scaled by it.
        autocast: a zero-argument factory of the training autocast context, so that probes
            run in the training precision (default: no autocast).
        profile_every: record a ``LineProfile`` (the real loss along the step against the
            method's quadratic model; ``take_profile()``) every this many steps; 0: never.
    """

    # Capabilities: what a method is, declared on its class (never changed by an instance)
    # and read by the engine and the invariant tests (tests/test_methods_invariants.py):
    #: the lr scales the optimizer's step as a whole, so its update must be linear in lr
    #: (refused otherwise on construction: ``check_linear_in_lr``)
    rescales_step: bool = False
    #: the lr is a function of the step count alone (a schedule): a step the GradScaler
    #: skipped counts; every other method keeps its lr over a skipped step
    counts_steps: bool = False
    #: ``step`` may evaluate ``loss_fn`` (probes): ``model`` and ``loss_fn`` are required
    needs_loss_fn: bool = False
    #: ``step`` may read its ``probe_batch``; the engine passes one only then
    wants_probe_batch: bool = False
    #: points of the profile grid, in units of the method's ``s`` (see each method)
    profile_grid: tuple[float, ...] = tuple(x / 4 for x in range(-4, 13))
    #: option -> (when it is read, in words; whether the options make it read): an option
    #: set away from its default where the other options leave it unread is refused
    READ_WHEN: dict[str, tuple[str, Callable[[Mapping[str, Any]], bool]]] = {}

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        model: nn.Module | None = None,
        loss_fn: LossFn | None = None,
        *,
        total_steps: int | None = None,
        scaler: torch.amp.GradScaler | None = None,
        autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
        profile_every: int = 0,
    ) -> None:
        if profile_every < 0:
            raise ValueError(f"profile_every must be >= 0, got {profile_every}")
        if self.needs_loss_fn and (model is None or loss_fn is None):
            raise ValueError(f"{type(self).__name__} needs model and loss_fn to probe the loss")
        if self.rescales_step:
            check_linear_in_lr(optimizer, type(self).__name__)
        self.optimizer = optimizer
        self.model = model
        self.loss_fn = loss_fn
        self.total_steps = total_steps
        self.scaler = scaler if scaler is not None and scaler.is_enabled() else None
        self.autocast = autocast or contextlib.nullcontext
        self.step_count = 0
        self.updates = 0  # calls of the optimizer's step (skipped by a GradScaler or not)
        self.passes: Counter[str] = Counter(forward=0, backward=0, hvp=0)
        # whether a probe removed a dropout the modules don't show (``F.dropout`` in the
        # model's own code): then the training loss is not the probes' function
        self.probes_removed_dropout = False
        self.diagnostics: dict[str, float] = {}
        self.profile_every = profile_every
        self._profile: LineProfile | None = None
        self._profile_pending = False

    def check_options(self, given: Mapping[str, Any]) -> None:
        """Refuse, one line each, an option value the class's signature does not allow
        (``genlr.options.check_options``: ``Literal`` choices, tuple lengths, finite numbers)
        and an option set where the others leave it unread (``READ_WHEN``). ``given``: the
        constructor's ``locals()`` (and the ``**shared`` options it passes on), from which
        the options are picked; one not given has its default."""
        options = options_of(type(self))
        values = {o.name: given.get(o.name, o.default) for o in options}
        check_options("lr", type(self).__name__, options, values)
        defaults = {o.name: o.default for o in options}
        for name, (when, read) in self.READ_WHEN.items():
            value = list(values[name]) if isinstance(values[name], tuple) else values[name]
            if value != defaults[name] and not read(values):
                raise SettingError(f"lr.{name}={value!r} is read only {when}")

    # ----------------------------------------------------------------- public protocol
    def step(self, batch: Any = None, loss: torch.Tensor | None = None,
             probe_batch: Any = None) -> float:
        """Apply this step's update; return group 0's lr afterwards. ``probe_batch`` is a
        batch the optimizer has not stepped on yet (the one the next step trains on); every
        method takes it, and those that do not measure on another batch ignore it."""
        raise NotImplementedError

    def summary_fields(self) -> dict[str, Any]:
        """What the method adds to ``summary.json`` (counts over the run; none by default)."""
        return {}

    def account_line(self) -> str | None:
        """Which lr the method picked and why, in one line for the end of a run's log
        (None: nothing to say beyond the lr itself)."""
        return None

    def on_eval(self, metrics: dict[str, float]) -> None:
        """Called by the engine after each evaluation (``ReduceLROnPlateau`` uses it)."""

    def take_profile(self) -> LineProfile | None:
        """The line profile recorded since the last call (None if none), handed over once."""
        profile, self._profile = self._profile, None
        return profile

    @property
    def last_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    @property
    def lrs(self) -> list[float]:
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        """Everything but the optimizer (saved separately). Subclasses extend this. The
        diagnostics come along, so a resumed run logs them before its next probe."""
        return {"step_count": self.step_count, "passes": dict(self.passes),
                "diagnostics": dict(self.diagnostics)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = state["step_count"]
        self.passes = Counter(state["passes"])
        self.diagnostics = dict(state["diagnostics"])

    # -------------------------------------------------------------- shared machinery
    def params(self) -> list[torch.Tensor]:
        """Parameters the optimizer will move this step (those with a gradient)."""
        return [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]

    def unscale_grads(self) -> None:
        """Make ``.grad`` hold the true gradient before a method reads it (AMP fp16)."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)

    def apply_update(self) -> bool:
        """The base optimizer's step, through the GradScaler; False if the scaler skipped it."""
        self.updates += 1
        if self.scaler is None:
            self.optimizer.step()
            return True
        scale = self.scaler.get_scale()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return self.scaler.get_scale() >= scale  # the scale only drops on a skipped step

    @torch.no_grad()
    def capture_direction(self) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
        """Take the optimizer's step once; return ``(params, d)`` with ``d = before - after``.

        Returns None when the step was skipped (GradScaler found inf/NaN gradients).
        """
        params = self.params()
        d = [p.detach().clone() for p in params]
        if not self.apply_update():
            return None
        torch._foreach_sub_(d, [p.detach() for p in params])
        return params, d

    @torch.no_grad()
    def place(self, params: list[torch.Tensor], d: list[torch.Tensor], s: float,
              current: float = 1.0) -> None:
        """Move from ``theta_before - current*d`` to ``theta_before - s*d``; scale lrs by s/current."""
        if s != current:
            self.shift(params, d, s, current)
            for group in self.optimizer.param_groups:
                group["lr"] = group["lr"] * s / current

    @torch.no_grad()
    def shift(self, params: list[torch.Tensor], d: list[torch.Tensor], s: float,
              current: float = 1.0) -> None:
        """Move from ``theta_before - current*d`` to ``theta_before - s*d``; lrs untouched."""
        if s != current:
            torch._foreach_add_(params, d, alpha=current - s)

    def grad_dot(self, d: list[torch.Tensor], params: list[torch.Tensor] | None = None) -> float:
        """``<g, d>`` from the gradient already in ``.grad`` (so ``phi'(0) = -<g, d>``)."""
        params = self.params() if params is None else params
        return dot([p.grad for p in params], d)

    def probe_loss(self, batch: Any) -> float:
        """The training loss at the current parameters, without side effects."""
        assert self.model is not None and self.loss_fn is not None
        self.passes["forward"] += 1
        return self._loss_no_side_effects(batch)

    @staticmethod
    def batch_mean(value: float | torch.Tensor) -> float:
        """A scalar measured on this process's batch (a loss, a curvature, an inner product
        with a local gradient) as the whole batch's value: under DDP, the mean over ranks,
        so that every rank picks the same learning rate (see ``genlr.distributed``)."""
        return mean_over_ranks(value)[0]

    # ---------------------------------------------------------- loss-landscape profile
    def profile_due(self) -> bool:
        """Whether this step should record a ``LineProfile``: the first step that builds a
        quadratic model at or after each multiple of ``profile_every``."""
        if self.profile_every and self.step_count % self.profile_every == 0:
            self._profile_pending = True
        return self._profile_pending

    @torch.no_grad()
    def record_profile(self, params: list[torch.Tensor], d: list[torch.Tensor], batch: Any,
                       current: float, model: Callable[[float], float],
                       chosen: float | None = None, anchored: bool = False) -> None:
        """Evaluate the real ``phi(s) = L(theta - s*d)`` on ``profile_grid`` (widened to cover
        ``chosen``) against ``model(s)``; return to ``theta - current*d``. With ``anchored``,
        ``model`` gives ``phi(s) - phi(0)`` and the measured ``phi(0)`` is added. Counted under
        ``passes["profile"]``, not ``forward``."""
        grid = list(self.profile_grid)
        if anchored and 0.0 not in grid:
            grid = sorted(grid + [0.0])
        if chosen is not None and math.isfinite(chosen) and chosen > grid[-1]:
            grid = [x * 1.25 * chosen / grid[-1] for x in grid]
        losses, at = [], current
        for s in grid:
            self.shift(params, d, s, at)
            at = s
            losses.append(self._loss_no_side_effects(batch))
            self.passes["profile"] += 1
        self.shift(params, d, current, at)
        offset = losses[grid.index(0.0)] if anchored else 0.0
        self._profile = LineProfile(
            step=self.step_count, s=tuple(grid), loss=tuple(losses),
            model=tuple(float(model(s)) + offset for s in grid),
            chosen=float(chosen) if chosen is not None else math.nan,
        )
        self._profile_pending = False

    def _loss_no_side_effects(self, batch: Any) -> float:
        assert self.model is not None and self.loss_fn is not None
        with torch.no_grad(), probe_mode(self.model) as probe, self.autocast():
            loss = self.loss_fn(self.model, batch)
        self.probes_removed_dropout |= probe.removed > 0 and self.model.training
        return self.batch_mean(loss)

    def applies_dropout(self) -> bool:
        """Whether the model's training forward applies dropout (``has_active_dropout``, or
        a dropout this method's probes have removed)."""
        return has_active_dropout(self.model) or self.probes_removed_dropout

    def scale_lrs(self, factor: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = group["lr"] * factor


def finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


def as_float(value: Any) -> float:
    """A Python float from a loss given as a tensor (detached first) or a number."""
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
