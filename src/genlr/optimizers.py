"""Base optimizers and their registry: ``optimizer=<name>`` on the command line.

Each builder takes the parameters (or parameter groups) and keyword-only options, whose
defaults are the project's defaults (see ``genlr.options``). Each option's allowed values
are in its annotation (``NonNegative``, ``Decay``, ...: what the optimizer's maths needs,
not only what its package checks; torch takes SGD's momentum 1.5 without a word), judged
by ``check_options`` before the builder runs; what ties two options together is judged here.
"""

from __future__ import annotations

from typing import Annotated, Callable, Iterable, Optional

import torch

from genlr.options import (AtLeast1, Decay, NonNegative, NonNegativeInt, Positive, PositiveInt,
                           Range, SettingError, build)

Params = Iterable[torch.Tensor] | Iterable[dict]


Betas = Annotated[tuple[float, float], Range(0, 1, high_open=True)]  # each in [0, 1)


def sgd(params: Params, *, lr: NonNegative = 0.1, momentum: Decay = 0.9, nesterov: bool = False,
        weight_decay: NonNegative = 0.0, dampening: Decay = 0.0) -> torch.optim.SGD:
    if nesterov and (momentum == 0 or dampening != 0):
        raise SettingError(f"optimizer.nesterov=true: needs optimizer.momentum > 0 and "
                           f"optimizer.dampening=0 (got momentum {momentum}, dampening {dampening})")
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov,
                           weight_decay=weight_decay, dampening=dampening)


def adam(params: Params, *, lr: NonNegative = 1e-3, betas: Betas = (0.9, 0.999),
         eps: Positive = 1e-8, weight_decay: NonNegative = 0.0,
         amsgrad: bool = False) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), eps=eps,
                            weight_decay=weight_decay, amsgrad=amsgrad)


def adamw(params: Params, *, lr: NonNegative = 1e-3, betas: Betas = (0.9, 0.999),
          eps: Positive = 1e-8, weight_decay: NonNegative = 0.01,
          amsgrad: bool = False) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), eps=eps,
                             weight_decay=weight_decay, amsgrad=amsgrad)


def rmsprop(params: Params, *, lr: NonNegative = 1e-3, alpha: Decay = 0.99, eps: Positive = 1e-8,
            momentum: Decay = 0.0, centered: bool = False,
            weight_decay: NonNegative = 0.0) -> torch.optim.RMSprop:
    return torch.optim.RMSprop(params, lr=lr, alpha=alpha, eps=eps, momentum=momentum,
                               centered=centered, weight_decay=weight_decay)


def adagrad(params: Params, *, lr: NonNegative = 1e-2, lr_decay: NonNegative = 0.0,
            eps: Positive = 1e-10, weight_decay: NonNegative = 0.0,
            initial_accumulator_value: NonNegative = 0.0) -> torch.optim.Adagrad:
    return torch.optim.Adagrad(params, lr=lr, lr_decay=lr_decay, eps=eps,
                               weight_decay=weight_decay,
                               initial_accumulator_value=initial_accumulator_value)


# ------------------------------------------------------------------ learning-rate-free peers
# Through their real packages, imported lazily so that genlr imports without them. Defaults
# are the packages' own; the engine drives their extra contracts through genlr.peers.

def _require(module: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"this optimizer needs {package}: pip install {package}") from None


def prodigy(params: Params, *, lr: Positive = 1.0, betas: Betas = (0.9, 0.999),
            beta3: Optional[Decay] = None, eps: Positive = 1e-8, weight_decay: NonNegative = 0.0,
            decouple: bool = True, use_bias_correction: bool = False,
            safeguard_warmup: bool = False, d0: Positive = 1e-6, d_coef: Positive = 1.0,
            growth_rate: Optional[AtLeast1] = None, slice_p: PositiveInt = 1) -> torch.optim.Optimizer:
    """Prodigy (Mishchenko & Defazio, 2024), ``prodigyopt.Prodigy``; step size ``d * lr``.

    ``growth_rate=None`` is Prodigy's unbounded default (``inf``, which YAML spells badly);
    a bound on d's growth per step, so at least 1 (1: d stays at d0).
    """
    Prodigy = _require("prodigyopt", "prodigyopt").Prodigy
    return Prodigy(params, lr=lr, betas=tuple(betas), beta3=beta3, eps=eps,
                   weight_decay=weight_decay, decouple=decouple,
                   use_bias_correction=use_bias_correction, safeguard_warmup=safeguard_warmup,
                   d0=d0, d_coef=d_coef,
                   growth_rate=float("inf") if growth_rate is None else growth_rate,
                   slice_p=slice_p)


def schedulefree_adamw(params: Params, *, lr: NonNegative = 0.0025,
                       betas: Betas = (0.9, 0.999), eps: Positive = 1e-8,
                       weight_decay: NonNegative = 0.0, warmup_steps: NonNegativeInt = 0,
                       r: NonNegative = 0.0,
                       weight_lr_power: NonNegative = 2.0) -> torch.optim.Optimizer:
    """Schedule-Free AdamW (Defazio et al., 2024), ``schedulefree.AdamWScheduleFree``.

    Needs ``train()``/``eval()`` around evaluation and checkpoints (``genlr.peers``).
    """
    sf = _require("schedulefree", "schedulefree")
    return sf.AdamWScheduleFree(params, lr=lr, betas=tuple(betas), eps=eps,
                                weight_decay=weight_decay, warmup_steps=warmup_steps, r=r,
                                weight_lr_power=weight_lr_power)


def schedulefree_sgd(params: Params, *, lr: NonNegative = 1.0,
                     momentum: Annotated[float, Range(0, 1, low_open=True, high_open=True)] = 0.9,
                     weight_decay: NonNegative = 0.0, warmup_steps: NonNegativeInt = 0,
                     r: NonNegative = 0.0,
                     weight_lr_power: NonNegative = 2.0) -> torch.optim.Optimizer:
    """Schedule-Free SGD (Defazio et al., 2024), ``schedulefree.SGDScheduleFree``; its
    momentum is the averaging's interpolation, in (0, 1) (the package's own bounds).

    Needs ``train()``/``eval()`` around evaluation and checkpoints (``genlr.peers``).
    """
    sf = _require("schedulefree", "schedulefree")
    return sf.SGDScheduleFree(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                              warmup_steps=warmup_steps, r=r, weight_lr_power=weight_lr_power)


def _dog(cls_name: str, params: Params, reps_rel: float, lr: float, weight_decay: float,
         eps: float, init_eta: float | None, averager_gamma: float) -> torch.optim.Optimizer:
    cls = getattr(_require("dog", "dog-optimizer"), cls_name)
    optimizer = cls(params, reps_rel=reps_rel, lr=lr, weight_decay=weight_decay, eps=eps,
                    init_eta=init_eta)
    # read by genlr.peers.DoGHooks, which owns the weight average DoG is evaluated on
    optimizer.averager_gamma = averager_gamma
    return optimizer


def dog(params: Params, *, reps_rel: Positive = 1e-6, lr: Positive = 1.0,
        weight_decay: NonNegative = 0.0, eps: Positive = 1e-8,
        init_eta: Optional[Positive] = None,
        averager_gamma: NonNegative = 8.0) -> torch.optim.Optimizer:
    """DoG (Ivgi, Hinder & Carmon, 2023), ``dog.DoG``: one step size for all parameters.

    Evaluated on its polynomial-decay weight average (``averager_gamma``, the package's
    default 8), as its authors require. They suggest ``reps_rel=1e-4`` with BatchNorm.
    """
    return _dog("DoG", params, reps_rel, lr, weight_decay, eps, init_eta, averager_gamma)


def ldog(params: Params, *, reps_rel: Positive = 1e-6, lr: Positive = 1.0,
         weight_decay: NonNegative = 0.0, eps: Positive = 1e-8,
         init_eta: Optional[Positive] = None,
         averager_gamma: NonNegative = 8.0) -> torch.optim.Optimizer:
    """Layer-wise DoG (Ivgi, Hinder & Carmon, 2023), ``dog.LDoG``: one step size per tensor.

    Evaluated on its polynomial-decay weight average, as for ``dog``.
    """
    return _dog("LDoG", params, reps_rel, lr, weight_decay, eps, init_eta, averager_gamma)


def dadapt_adam(params: Params, *, lr: Positive = 1.0, betas: Betas = (0.9, 0.999),
                eps: Positive = 1e-8, weight_decay: NonNegative = 0.0, decouple: bool = False,
                use_bias_correction: bool = False, d0: Positive = 1e-6,
                growth_rate: Optional[AtLeast1] = None) -> torch.optim.Optimizer:
    """D-Adaptation Adam (Defazio & Mishchenko, ICML 2023), ``dadaptation.DAdaptAdam``; step
    size ``d * lr``. ``growth_rate=None`` is the package's unbounded default (``inf``)."""
    DAdaptAdam = _require("dadaptation", "dadaptation").DAdaptAdam
    return DAdaptAdam(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                      decouple=decouple, use_bias_correction=use_bias_correction, d0=d0,
                      growth_rate=float("inf") if growth_rate is None else growth_rate)


def dadapt_sgd(params: Params, *, lr: Positive = 1.0, momentum: Decay = 0.0,
               weight_decay: NonNegative = 0.0, d0: Positive = 1e-6,
               growth_rate: Optional[AtLeast1] = None) -> torch.optim.Optimizer:
    """D-Adaptation SGD (Defazio & Mishchenko, ICML 2023), ``dadaptation.DAdaptSGD``; step
    size ``d * lr / |g_0|`` (the first gradient's norm)."""
    DAdaptSGD = _require("dadaptation", "dadaptation").DAdaptSGD
    return DAdaptSGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, d0=d0,
                     growth_rate=float("inf") if growth_rate is None else growth_rate)


# ------------------------------------------------------------------ the authors' own GeN

def _cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``torch.nn.CrossEntropyLoss()`` (the reference's default criterion), with a language
    model's ``(batch, tokens, classes)`` outputs read as ``batch * tokens`` predictions."""
    return torch.nn.functional.cross_entropy(outputs.flatten(0, -2), targets.flatten())


class GeNReference(torch.optim.Optimizer):
    """The authors' GeN as they publish it (Bu & Xu, ICLR 2025; PyPI ``gen-optim``, module
    ``GeN``): ``GeN.lr_parabola`` sets the learning rate of ``base`` before every ``every``-th
    step, as its README's loop does, at its published defaults (``task="image_cls"``,
    ``lr_factor=[-1, 0, 1]``, no horizon scale).

    Left as it is, so that it can be compared: ``lr_parabola`` takes an optimizer step of its
    own to find the direction and puts the weights back before the training step steps
    again, so on a probe step the base optimizer's state (Adam's moments, the momentum
    buffer, the step count) advances twice on the same gradient; its probe forwards run in
    training mode (dropout on, BatchNorm statistics updated). Its loss is cross entropy:
    classification tasks only. One process (no DDP).

    What it measures on: the reference draws a fresh batch from its own iterator over the
    training set; here it gets the batch the next step trains on, handed over before each
    step by ``genlr.peers.GeNReferenceHooks`` (``probe_batch``; the model is ``model``), and
    it does not probe at the last step, which has no next batch. It runs inside ``step()``,
    so under an AMP GradScaler it sees unscaled gradients.

    The learning rate is the base optimizer's, ``base.param_groups[i]["lr"]``, which only
    the reference changes; this optimizer's own groups (the same parameters) hold the lr it
    started from, so that a schedule stepping them cannot undo the reference's (gen-train
    drives it with ``lr=constant`` only).
    """

    def __init__(self, base: torch.optim.Optimizer, *, every: PositiveInt = 4,
                 scale: Positive = 1.0) -> None:
        self._lr_parabola = _require("GeN", "gen-optim scipy scikit-learn").lr_parabola
        if every < 1 or not scale > 0:  # built directly (gen_optim_* come through build)
            raise ValueError(f"every must be >= 1 and scale > 0, got every={every}, scale={scale}")
        self.base, self.every, self.scale = base, every, scale
        super().__init__([dict(group) for group in base.param_groups], base.defaults)
        self.state = base.state  # one state: the base optimizer's
        self.steps = 0
        self.model: torch.nn.Module | None = None
        self.probe_batch = None

    def step(self, closure=None):
        if (self.model is not None and self.probe_batch is not None
                and (self.steps + 1) % self.every == 0):
            device = next(self.model.parameters()).device
            self._lr_parabola(self.model, self.base, criterion=_cross_entropy,
                              tr_iter=iter([self.probe_batch]), device=device,
                              task="image_cls", scale=self.scale)
        self.steps += 1
        self.probe_batch = None
        return self.base.step(closure)

    def state_dict(self) -> dict:
        return {**self.base.state_dict(), "reference_steps": self.steps}

    def load_state_dict(self, state_dict: dict) -> None:
        state = dict(state_dict)
        self.steps = int(state.pop("reference_steps"))
        self.base.load_state_dict(state)
        self.state = self.base.state


def gen_optim_adamw(params: Params, *, lr: NonNegative = 1e-3, betas: Betas = (0.9, 0.999),
                    eps: Positive = 1e-8, weight_decay: NonNegative = 0.01, amsgrad: bool = False,
                    every: PositiveInt = 4, scale: Positive = 1.0) -> GeNReference:
    """The authors' GeN (``GeNReference``) setting AdamW's lr; AdamW's options as ``adamw``."""
    return GeNReference(adamw(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                              amsgrad=amsgrad), every=every, scale=scale)


def gen_optim_sgd(params: Params, *, lr: NonNegative = 0.1, momentum: Decay = 0.9,
                  nesterov: bool = False, weight_decay: NonNegative = 0.0, dampening: Decay = 0.0,
                  every: PositiveInt = 4, scale: Positive = 1.0) -> GeNReference:
    """The authors' GeN (``GeNReference``) setting SGD's lr; SGD's options as ``sgd``."""
    return GeNReference(sgd(params, lr=lr, momentum=momentum, nesterov=nesterov,
                            weight_decay=weight_decay, dampening=dampening),
                        every=every, scale=scale)


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": sgd,
    "adam": adam,
    "adamw": adamw,
    "rmsprop": rmsprop,
    "adagrad": adagrad,
    # learning-rate-free peers (genlr.peers drives their train/eval and averaging)
    "prodigy": prodigy,
    "schedulefree_adamw": schedulefree_adamw,
    "schedulefree_sgd": schedulefree_sgd,
    "dog": dog,
    "ldog": ldog,
    "dadapt_adam": dadapt_adam,
    "dadapt_sgd": dadapt_sgd,
    # the authors' own GeN driving a base optimizer (genlr.peers hands it its probe batch)
    "gen_optim_adamw": gen_optim_adamw,
    "gen_optim_sgd": gen_optim_sgd,
}


def build_optimizer(name: str, params: Params, **options) -> torch.optim.Optimizer:
    """The optimizer ``name`` over ``params`` with ``options`` (the builder's keyword-only
    parameters, checked against its signature first)."""
    return build("optimizer", OPTIMIZERS, name, options, params)
