"""What the engine must do around optimizers that need more than ``step()``.

Learning-rate-free peers each come with a usage contract from their authors:

* Schedule-Free (Defazio et al., 2024; ``schedulefree``): the parameters hold the
  gradient-evaluation point ``y`` in train mode and the averaged point ``x`` in eval mode,
  so ``optimizer.train()`` must run before training steps and ``optimizer.eval()`` before
  evaluation and before saving a checkpoint.
* DoG / LDoG (Ivgi, Hinder & Carmon, ICML 2023; ``dog-optimizer``): "iterate averaging is
  crucial"; the model is evaluated on its polynomial-decay average (Shamir & Zhang, 2013),
  which is advanced after every optimizer step.
* Prodigy (Mishchenko & Defazio, 2024; ``prodigyopt``) and D-Adaptation Adam (Defazio &
  Mishchenko, 2023; ``dadaptation``): nothing extra, but the step size is ``d * lr``, not
  ``lr``; D-Adaptation SGD's is ``d * lr / |g_0|``.
* The authors' GeN (Bu & Xu, 2025; ``gen-optim``, ``genlr.optimizers.GeNReference``):
  ``lr_parabola`` measures the loss on a training batch the optimizer has not stepped on,
  which the engine hands over before each step.

The engine talks to every optimizer through :class:`OptimizerHooks`::

    hooks = optimizer_hooks(optimizer, model, task)
    hooks.train()                       # before training, and after each eval/checkpoint
    hooks.before_step(probe_batch)      # the next step's batch if hooks.wants_probe_batch
    ... method.step(batch, loss=loss); hooks.after_step()
    hooks.lrs()                         # effective step size per group, for train/lr
    hooks.eval()                        # before evaluating and before saving a checkpoint
    with hooks.eval_model() as m: ...   # the module to evaluate
    hooks.state_dict() / hooks.load_state_dict(state)   # what the hooks own

For every other optimizer the hooks are no-ops and the model itself is evaluated.
"""

from __future__ import annotations

import contextlib
import math
import sys
from typing import Any, Iterator

import torch
from torch import nn


class OptimizerHooks:
    """No-op hooks: ``step()`` is all the optimizer needs and ``group["lr"]`` is its step."""

    #: whether ``before_step`` wants the batch the next step trains on
    wants_probe_batch: bool = False
    #: whether the optimizer sets its own learning rate (then only ``lr=constant`` drives it)
    sets_lr: bool = False
    #: whether it runs in one process only (then ``trainer.strategy=ddp`` is refused)
    single_process: bool = False

    def __init__(self, optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
        self.optimizer = optimizer
        self.model = model

    def train(self) -> None:
        """Put the optimizer in training mode (before training steps)."""

    def eval(self) -> None:
        """Put the optimizer in evaluation mode (before evaluation and checkpoints)."""

    def before_step(self, probe_batch: Any) -> None:
        """Called before each training step's update with the batch the next step trains on
        (None at the last step, and unless ``wants_probe_batch``)."""

    def after_step(self) -> None:
        """Called once after every training step (after ``method.step``)."""

    @contextlib.contextmanager
    def eval_model(self) -> Iterator[nn.Module]:
        """The module to evaluate; by default the model itself."""
        yield self.model

    def lrs(self) -> list[float]:
        """The effective step size of each parameter group, for ``train/lr``."""
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        """Whatever the hooks own beyond the optimizer and model (saved in checkpoints)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class ScheduleFreeHooks(OptimizerHooks):
    """Schedule-Free: toggle ``train()``/``eval()``; log the warm-up-scheduled lr."""

    def train(self) -> None:
        self.optimizer.train()

    def eval(self) -> None:
        self.optimizer.eval()

    def lrs(self) -> list[float]:
        out = []
        for g in self.optimizer.param_groups:
            k, warmup = g["k"], g["warmup_steps"]
            if k > 0:  # the lr the last step used, as the optimizer recorded it
                out.append(float(g["scheduled_lr"]))
            else:  # before any step: the lr the first step will use
                out.append(float(g["lr"]) * (1.0 / warmup if warmup > 0 else 1.0))
        return out


class ProdigyHooks(OptimizerHooks):
    """Prodigy and D-Adaptation Adam: the Adam step size is ``d * lr`` (times Adam's bias
    correction if enabled, as both compute it).

    Reported with the current ``d``, i.e. the step size of the next step, as Prodigy's
    authors log it (``d`` is re-estimated inside ``step()`` and the old one is not kept).
    """

    def lrs(self) -> list[float]:
        out = []
        for g in self.optimizer.param_groups:
            scale = 1.0
            if g["use_bias_correction"]:
                beta1, beta2 = g["betas"]
                k = g["k"]  # the correction of the next step, as Prodigy computes it
                scale = (1 - beta2 ** (k + 1)) ** 0.5 / (1 - beta1 ** (k + 1))
            out.append(float(g["d"]) * float(g["lr"]) * scale)
        return out


class DAdaptSGDHooks(OptimizerHooks):
    """D-Adaptation SGD: the step size is ``d * lr / |g_0|``, with ``|g_0|`` the first
    gradient's norm; NaN before the first step (not known yet, as for DoG)."""

    def lrs(self) -> list[float]:
        g0 = self.optimizer.param_groups[0].get("g0_norm")
        return [float(g["d"]) * float(g["lr"]) / g0 if g0 else math.nan
                for g in self.optimizer.param_groups]


class GeNReferenceHooks(OptimizerHooks):
    """The authors' GeN: gives ``GeNReference`` the model and, before each step, the batch
    the next step trains on; its lr is the base optimizer's. Its cross-entropy fit needs a
    classification task."""

    wants_probe_batch = True
    sets_lr = True
    single_process = True  # its probes and lr are this process's own

    def __init__(self, optimizer: torch.optim.Optimizer, model: nn.Module, task: Any = None) -> None:
        super().__init__(optimizer, model)
        if task is not None and not task.classification:
            raise ValueError(f"the authors' GeN (gen-optim) fits a cross-entropy loss; task "
                             f"{task.name} is not a classification task")
        optimizer.model = model

    def before_step(self, probe_batch: Any) -> None:
        self.optimizer.probe_batch = probe_batch

    def lrs(self) -> list[float]:
        return [float(g["lr"]) for g in self.optimizer.base.param_groups]


class DoGHooks(OptimizerHooks):
    """DoG / LDoG: keep the polynomial-decay average of the weights and evaluate on it.

    ``lrs()`` is DoG's ``eta`` (one value per group); for LDoG, whose ``eta`` is per layer,
    it is the mean over the group's layers. Before the first step it is ``init_eta`` if set,
    else NaN: DoG's first step size depends on the first gradient, so it is not known yet
    (the run summary reads NaN as "no value" rather than a misleading 0).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
        super().__init__(optimizer, model)
        from dog import PolynomialDecayAverager

        gamma = getattr(optimizer, "averager_gamma", 8.0)  # set by genlr.optimizers.dog
        self.averager = PolynomialDecayAverager(model, gamma=gamma)

    def after_step(self) -> None:
        self.averager.step()

    @contextlib.contextmanager
    def eval_model(self) -> Iterator[nn.Module]:
        averaged = self.averager.averaged_model
        averaged.train(self.model.training)  # the copy's mode dates from construction
        yield averaged

    def lrs(self) -> list[float]:
        out = []
        for g in self.optimizer.param_groups:
            if "eta" not in g:
                out.append(float(g["init_eta"]) if g["init_eta"] is not None else math.nan)
                continue
            etas = [float(e) for e in g["eta"]]
            out.append(sum(etas) / len(etas) if etas else 0.0)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"averager": self.averager.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "averager" in state:
            self.averager.load_state_dict(state["averager"])


def _peer_class(module: str, name: str) -> type | None:
    """The class ``module.name`` if its package was imported; an optimizer built from it
    must have imported it, so a missing package is never imported here."""
    mod = sys.modules.get(module)
    return getattr(mod, name, None) if mod is not None else None


def _isinstance(optimizer: torch.optim.Optimizer, module: str, *names: str) -> bool:
    classes = tuple(c for c in (_peer_class(module, n) for n in names) if c is not None)
    return bool(classes) and isinstance(optimizer, classes)


def optimizer_hooks(optimizer: torch.optim.Optimizer, model: nn.Module,
                    task: Any = None) -> OptimizerHooks:
    """The hooks for ``optimizer`` (no-ops unless it is a peer with a usage contract);
    ``task``, where given, is checked against what the peer needs."""
    from genlr.optimizers import GeNReference

    if isinstance(optimizer, GeNReference):
        return GeNReferenceHooks(optimizer, model, task)
    if _isinstance(optimizer, "schedulefree", "AdamWScheduleFree", "SGDScheduleFree",
                   "RAdamScheduleFree"):
        return ScheduleFreeHooks(optimizer, model)
    if _isinstance(optimizer, "dog", "DoG"):  # LDoG subclasses DoG
        return DoGHooks(optimizer, model)
    if _isinstance(optimizer, "prodigyopt", "Prodigy") or _isinstance(optimizer, "dadaptation",
                                                                        "DAdaptAdam"):
        return ProdigyHooks(optimizer, model)
    if _isinstance(optimizer, "dadaptation", "DAdaptSGD"):
        return DAdaptSGDHooks(optimizer, model)
    return OptimizerHooks(optimizer, model)


__all__ = ["OptimizerHooks", "ScheduleFreeHooks", "ProdigyHooks", "DAdaptSGDHooks",
           "GeNReferenceHooks", "DoGHooks", "optimizer_hooks"]
