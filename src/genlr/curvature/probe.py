"""Probe mode: the model evaluated off the training path, for a measurement of the loss along
a direction, without side effects on training (docs/design.md, "The data flow of one step").

Both kinds of measurement run under it: the loss probes of the parabola, Polyak and Newt's
lookahead, and every exact curvature path (``genlr.curvature.directional``).
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

#: ``loss_fn(model, batch)``: the scalar training loss of a batch
LossFn = Callable[[nn.Module, Any], torch.Tensor]


def _batchnorm_modules(model: nn.Module) -> Iterator[nn.modules.batchnorm._BatchNorm]:
    return (m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))


def has_active_dropout(model: nn.Module) -> bool:
    """Whether the model's modules apply dropout in its training forward, so that a training
    loss is not the loss a probe measures: a dropout module or attention/recurrent layer with
    ``p > 0`` in training mode (dropout in the model's own code shows only to a probe:
    ``LRMethod.applies_dropout``)."""
    if not model.training:
        return False
    for m in model.modules():
        p = m.p if isinstance(m, nn.modules.dropout._DropoutNd) else getattr(m, "dropout", 0.0)
        if isinstance(p, (int, float)) and p > 0 and isinstance(
                m, (nn.modules.dropout._DropoutNd, nn.MultiheadAttention, nn.RNNBase)):
            return True
    return False


def _bernoulli_mean(func, args, kwargs):
    """What a Bernoulli draw is on average: its probabilities (``p`` given, or the tensor's
    own values), in place for ``bernoulli_``."""
    p = args[1] if len(args) > 1 else kwargs.get("p")
    base = args[0]
    if func is torch.Tensor.bernoulli_:
        return base.fill_(p if p is not None else 0.5) if not isinstance(p, torch.Tensor) \
            else base.copy_(p.expand_as(base))
    return base.clone() if p is None else torch.full_like(base, p)


class _NoDropout(TorchFunctionMode):
    """Every dropout becomes the identity, whatever switched it on (a module's ``training``
    flag, ``F.dropout(x, p, training=True)`` in the model's code, attention's ``dropout_p``),
    and every Bernoulli draw its mean ``p``, which turns stochastic depth (timm's
    ``DropPath``, ``torchvision.ops.stochastic_depth``: a mask drawn per sample, divided by
    its keep probability) and any other inverted-dropout mask into the identity, as
    evaluation does; ``removed`` counts those with ``p > 0`` and the draws. Other random
    draws in the forward (``torch.randn``, ``uniform_``, ...) have no mean to take in their
    place: they run, and are named in ``random_draws``."""

    IDENTITY = {F.dropout: 1, F.alpha_dropout: 1, F.feature_alpha_dropout: 1, F.dropout1d: 1,
                F.dropout2d: 1, F.dropout3d: 1, torch.dropout: 1, torch.alpha_dropout: 1,
                torch.feature_dropout: 1, torch.feature_alpha_dropout: 1}  # position of p
    DROPOUT_P = {F.scaled_dot_product_attention: ("dropout_p", 4),
                 F.multi_head_attention_forward: ("dropout_p", 10)}
    BERNOULLI = {torch.bernoulli, torch.Tensor.bernoulli, torch.Tensor.bernoulli_}
    RANDOM = {torch.rand, torch.randn, torch.randint, torch.rand_like, torch.randn_like,
              torch.randint_like, torch.randperm, torch.multinomial, torch.normal,
              torch.poisson, torch.Tensor.normal_, torch.Tensor.uniform_,
              torch.Tensor.exponential_, torch.Tensor.geometric_, torch.Tensor.cauchy_,
              torch.Tensor.log_normal_, torch.Tensor.random_, torch.Tensor.multinomial}

    def __init__(self) -> None:
        super().__init__()
        self.removed = 0
        self.random_draws: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.IDENTITY:
            p = args[1] if len(args) > 1 else kwargs.get("p", 0.5)
            self.removed += bool(p)
            return args[0] if args else kwargs["input"]
        if func in self.BERNOULLI:
            self.removed += 1
            return _bernoulli_mean(func, args, kwargs)
        if func in self.RANDOM and not _COMPILING:
            owner = "Tensor" if getattr(torch.Tensor, func.__name__, None) is func else "torch"
            self.random_draws.add(f"{owner}.{func.__name__}")
        if func in self.DROPOUT_P:
            name, position = self.DROPOUT_P[func]
            if len(args) > position:
                self.removed += bool(args[position])
                args = (*args[:position], 0.0, *args[position + 1:])
            else:
                self.removed += bool(kwargs.get(name))
                kwargs = {**kwargs, name: 0.0}
        return func(*args, **kwargs)


_WARNED_DRAWS: set[str] = set()
_COMPILING = False


@contextlib.contextmanager
def compiling() -> Iterator[None]:
    """Around a compiler's own work inside ``probe_mode``: inductor, setting itself up,
    traces patterns of its own (``torch.randperm`` among them), which are no draws of the
    model's."""
    global _COMPILING
    before, _COMPILING = _COMPILING, True
    try:
        yield
    finally:
        _COMPILING = before


def warn_random_draws(draws: set[str]) -> None:
    """Say once per kind of draw that the probes measured a model that draws random numbers
    in its forward (other than dropout and Bernoulli masks, which they remove): its
    measurements then follow those draws, which the run's global RNG does not see."""
    new = sorted(draws - _WARNED_DRAWS)
    if new:
        _WARNED_DRAWS.update(new)
        warnings.warn(f"genlr's probes: the model draws random numbers in its forward "
                      f"({', '.join(new)}) that cannot be replaced by their mean; the loss "
                      f"and curvature measured follow those draws", stacklevel=3)


@contextlib.contextmanager
def probe_mode(model: nn.Module) -> Iterator[_NoDropout]:
    """BatchNorm normalises with batch statistics as in training, but writes no running
    statistic; every form of dropout is off and every Bernoulli mask (stochastic depth) its
    mean (see ``_NoDropout``, which it yields: its ``removed`` counts what it switched off;
    recurrent layers' dropout between layers too); other random draws are warned about once
    (``warn_random_draws``); the global RNG is untouched. Other modules keep their mode."""
    saved = [
        (m, [b.clone() for b in m.buffers(recurse=False)]) for m in _batchnorm_modules(model)
    ]
    # In training mode with ``track_running_stats`` off, BatchNorm normalises with the batch
    # statistics and writes no buffer at all, which also keeps torch.func transforms (jvp)
    # from tripping over an in-place update of a captured buffer.
    tracking = [m for m, _ in saved if m.training and m.track_running_stats]
    for m in tracking:
        m.track_running_stats = False
    recurrent = [(m, m.dropout) for m in model.modules() if isinstance(m, nn.RNNBase) and m.dropout]
    for m, _ in recurrent:
        m.dropout = 0.0
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.is_cuda})
    no_dropout = _NoDropout()
    try:
        with torch.random.fork_rng(devices=devices), no_dropout:
            yield no_dropout
        warn_random_draws(no_dropout.random_draws)
    finally:
        for m in tracking:
            m.track_running_stats = True
        for m, p in recurrent:
            m.dropout = p
        with torch.no_grad():
            for m, buffers in saved:
                for b, old in zip(m.buffers(recurse=False), buffers):
                    b.copy_(old)
