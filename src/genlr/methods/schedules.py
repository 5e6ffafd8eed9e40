"""Baseline learning-rate schedules: the optimizer's own step, then a fixed schedule.

Every schedule is measured in optimizer steps over the run's horizon ``total_steps``, and
built on ``torch.optim.lr_scheduler`` so that its behaviour is PyTorch's.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Literal

from torch.optim import lr_scheduler

from genlr.methods.base import LRMethod
from genlr.options import SettingError

# Decay shapes over a run's progress ``t/T`` in [0, 1], from 1 at the start to 0 at the end
# (``constant`` stays 1): the schedules' and GeN's horizon-aware ``scale``.
DECAYS: dict[str, Callable[[float], float]] = {
    "constant": lambda progress: 1.0,
    "linear": lambda progress: 1.0 - progress,
    "cosine": lambda progress: 0.5 * (1.0 + math.cos(math.pi * progress)),
}


class ScheduledLR(LRMethod):
    """``optimizer.step()`` followed by ``scheduler.step()``; no probes, no extra passes."""

    counts_steps = True

    def __init__(self, optimizer, model=None, loss_fn=None, **common) -> None:
        super().__init__(optimizer, model, loss_fn, **common)
        self.scheduler = self.make_scheduler()

    def make_scheduler(self) -> Any:
        raise NotImplementedError

    def horizon(self) -> int:
        if not self.total_steps or self.total_steps < 1:
            raise SettingError(f"lr={self.name} needs the number of training steps (total_steps)")
        return self.total_steps

    @property
    def name(self) -> str:
        """Its name in the registry (``lr=warmup_cosine``), as gen-train says it."""
        from genlr.methods import METHODS  # (which imports this module)

        return next((k for k, v in METHODS.items() if v is type(self)), type(self).__name__)

    def step(self, batch=None, loss=None, probe_batch=None) -> float:
        self.apply_update()
        self.step_count += 1
        if not isinstance(self.scheduler, lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step()
        return self.last_lr

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.scheduler.load_state_dict(state["scheduler"])


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a fraction in [0, 1], got {value}")


class Constant(ScheduledLR):
    """The optimizer's learning rate, unchanged."""

    def make_scheduler(self):
        return lr_scheduler.LambdaLR(self.optimizer, lambda step: 1.0)


class Step(ScheduledLR):
    """Multiply lr by ``gamma`` at each milestone (fractions of the run)."""

    def __init__(self, optimizer, model=None, loss_fn=None, *,
                 milestones: list[float] = (0.5, 0.75), gamma: float = 0.1, **common) -> None:
        for m in milestones:
            _check_fraction("milestones", m)
        if gamma <= 0:
            raise ValueError(f"gamma must be positive, got {gamma}")
        self.milestones, self.gamma = list(milestones), gamma
        super().__init__(optimizer, model, loss_fn, **common)

    def make_scheduler(self):
        steps = sorted(max(1, round(m * self.horizon())) for m in self.milestones)
        return lr_scheduler.MultiStepLR(self.optimizer, milestones=steps, gamma=self.gamma)


class WarmupDecay(ScheduledLR):
    """Linear warm-up over the first ``warmup`` of the run (a fraction), then ``shape`` from
    the initial lr down to ``final_factor`` times it."""

    def __init__(self, optimizer, model=None, loss_fn=None, *,
                 warmup: float = 0.0, final_factor: float = 0.0, **common) -> None:
        _check_fraction("warmup", warmup)
        _check_fraction("final_factor", final_factor)
        self.warmup, self.final_factor = warmup, final_factor
        super().__init__(optimizer, model, loss_fn, **common)

    @staticmethod
    def shape(progress: float) -> float:
        """1 at the start of the decay, 0 at its end."""
        raise NotImplementedError

    def make_scheduler(self):
        total, floor = self.horizon(), self.final_factor
        warm = max(1, round(self.warmup * total)) if self.warmup > 0 else 0

        def factor(t: int) -> float:
            if t < warm:
                return (t + 1) / warm
            progress = min(t - warm, total - warm) / max(1, total - warm)
            return floor + (1 - floor) * self.shape(progress)

        return lr_scheduler.LambdaLR(self.optimizer, factor)


class Cosine(WarmupDecay):
    """Cosine annealing from the initial lr to ``final_factor`` times it."""

    shape = staticmethod(DECAYS["cosine"])

    def __init__(self, optimizer, model=None, loss_fn=None, *,
                 final_factor: float = 0.0, **common) -> None:
        super().__init__(optimizer, model, loss_fn, warmup=0.0, final_factor=final_factor, **common)


class WarmupCosine(WarmupDecay):
    """Linear warm-up over ``warmup`` (a fraction of the run), then cosine to ``final_factor``."""

    shape = staticmethod(DECAYS["cosine"])

    def __init__(self, optimizer, model=None, loss_fn=None, *,
                 warmup: float = 0.05, final_factor: float = 0.0, **common) -> None:
        super().__init__(optimizer, model, loss_fn, warmup=warmup, final_factor=final_factor, **common)


class Linear(WarmupDecay):
    """Linear warm-up over ``warmup`` (a fraction of the run), then linear decay to ``final_factor``."""

    shape = staticmethod(DECAYS["linear"])


class OneCycle(ScheduledLR):
    """PyTorch's one-cycle policy (Smith & Topin, 2019) peaking at ``max_factor`` x the initial lr."""

    def __init__(self, optimizer, model=None, loss_fn=None, *, max_factor: float = 10.0,
                 pct_start: float = 0.3, anneal: Literal["cos", "linear"] = "cos",
                 **common) -> None:
        self.check_options(locals())
        if max_factor <= 0:
            raise ValueError(f"max_factor must be positive, got {max_factor}")
        _check_fraction("pct_start", pct_start)
        self.max_factor, self.pct_start, self.anneal = max_factor, pct_start, anneal
        super().__init__(optimizer, model, loss_fn, **common)

    def make_scheduler(self):
        max_lrs = [g["lr"] * self.max_factor for g in self.optimizer.param_groups]
        return lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=max_lrs, total_steps=self.horizon() + 1,
            pct_start=self.pct_start, anneal_strategy=self.anneal, cycle_momentum=False,
        )


class Plateau(ScheduledLR):
    """Multiply lr by ``factor`` when the eval loss has not improved for ``patience`` evals."""

    counts_steps = False  # the lr follows the evaluations

    def __init__(self, optimizer, model=None, loss_fn=None, *, factor: float = 0.1,
                 patience: int = 2, threshold: float = 1e-4, min_lr: float = 0.0,
                 **common) -> None:
        if not 0 < factor < 1:
            raise ValueError(f"factor must be in (0, 1), got {factor}")
        if patience < 0:
            raise ValueError(f"patience must be >= 0, got {patience}")
        self.factor, self.patience, self.threshold, self.min_lr = factor, patience, threshold, min_lr
        super().__init__(optimizer, model, loss_fn, **common)

    def make_scheduler(self):
        return lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="min", factor=self.factor, patience=self.patience,
            threshold=self.threshold, min_lr=self.min_lr,
        )

    def on_eval(self, metrics: dict[str, float]) -> None:
        if "loss" in metrics and math.isfinite(metrics["loss"]):
            self.scheduler.step(metrics["loss"])
