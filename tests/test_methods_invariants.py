"""Invariants every GeN/Newt step keeps: one optimizer step, side-effect-free probes,
group ratios, AMP, fallbacks, checkpoints, diagnostics, registry."""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
import re
from dataclasses import dataclass, field
from typing import Any, Optional

import pytest
import torch
from torch import nn

from genlr import ExactGeN, Newt, ParabolaGeN
from genlr.methods import METHODS, IncompatibleOptimizerError
from genlr.methods.base import LRMethod
from genlr.methods.gen_base import GeNBase
from genlr.methods.schedules import DECAYS, Cosine
from genlr.options import options_of
from methods_helpers import classification_loss, cnn, cnn_batch, mlp, mlp_batch

class Halving(LRMethod):
    """A throwaway schedule written as a user would (halve the lr every other step), enrolled
    below: the invariant tests read what a method declares (``counts_steps``,
    ``needs_loss_fn``, ...), so a new method passes them by declaring, not by deriving from
    one of ours."""

    counts_steps = True

    def step(self, batch=None, loss=None, probe_batch=None) -> float:
        self.apply_update()
        self.step_count += 1
        if self.step_count % 2 == 0:
            self.scale_lrs(0.5)
        return self.last_lr


class HalveOnRise(LRMethod):
    """A throwaway method that follows what it measures without rescaling the step: halve
    the lr when the training loss rises above twice the best seen (a user's ``loss_plateau``)."""

    def __init__(self, optimizer, model=None, loss_fn=None, **common) -> None:
        super().__init__(optimizer, model, loss_fn, **common)
        self.best = math.inf

    def step(self, batch=None, loss=None, probe_batch=None) -> float:
        if self.apply_update():  # a skipped step measured nothing
            value = float(loss.detach())
            if value > 2 * self.best:
                self.scale_lrs(0.5)
            self.best = min(self.best, value)
        self.step_count += 1
        return self.last_lr

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.best = state["best"]


@dataclass
class MethodInfo:
    """What the invariant tests take of a method besides its class (as torch's
    ``OptimizerInfo``): options that make a few test steps do the method's work, variants
    worth their own case, and inputs it must refuse, each with the words it refuses them in.
    All optional: a method is enrolled in every test by its registry line alone."""

    cls: type[LRMethod]
    options: dict[str, Any] = field(default_factory=dict)
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    error_inputs: list[tuple[dict[str, Any], str]] = field(default_factory=list)


INFOS = {name: MethodInfo(cls) for name, cls in METHODS.items()} | {
    "gen_exact": MethodInfo(
        ExactGeN, {"every": 1}, {"lazy": {"every": 2, "curvature_batch": 0.5}},
        [({"curvature": "magic"}, "curvature='magic'"), ({"every": 0}, "every must be >= 1"),
         ({"max_factor": 0.5}, "max_factor must be >= 1")]),
    "gen_parabola": MethodInfo(
        ParabolaGeN, {"every": 1},
        {"5pts": {"every": 2, "points": [-2, -1, 0, 1, 2], "r2_min": 0.0}},
        [({"scale": "cosine", "total_steps": None}, "needs the number of training steps"),
         ({"fallback": "shrink", "shrink": 0.0}, "shrink must be in (0, 1]")]),
    "newt": MethodInfo(
        Newt, {"gamma": 0.5},
        {"full": {"lookahead_batch": None}, "next_step": {"lookahead": "next_step", "gamma": 0.5},
         "window": {"lookahead": "window", "window": 2}},
        [({"approx": "magic"}, "approx='magic'")]),
    "halving": MethodInfo(Halving),  # the throwaway methods above
    "halve_on_rise": MethodInfo(HalveOnRise),
}
REGISTRY = {name: info.cls for name, info in INFOS.items()}
CASES = {name: info.options for name, info in INFOS.items()} | {
    f"{name}/{variant}": options for name, info in INFOS.items()
    for variant, options in info.variants.items()}
TOTAL_STEPS = 6  # the horizon the schedules are built for (the tests take at most 6 steps)


def build(case, optimizer, model, loss_fn=classification_loss, **options):
    """The method of ``case`` (``<registry name>`` or ``<registry name>/<variant>``)."""
    options = {"total_steps": TOTAL_STEPS, **CASES[case], **options}
    return REGISTRY[case.split("/")[0]](optimizer, model, loss_fn, **options)


def test_every_registered_method_is_enrolled():
    assert set(METHODS) <= set(INFOS)
    assert all(info.cls is METHODS.get(name, info.cls) for name, info in INFOS.items())


@pytest.mark.parametrize("name, options, words", [
    (name, options, words) for name, info in INFOS.items() for options, words in info.error_inputs])
def test_error_inputs_are_refused_in_their_words(name, options, words):
    model = mlp()
    with pytest.raises(ValueError) as refused:
        build(name, torch.optim.SGD(model.parameters(), lr=0.1), model, **options)
    assert words in str(refused.value) and "\n" not in str(refused.value)


def _other_value(option):
    """A value of ``option`` other than its default, of its type."""
    if option.choices:
        return next(c for c in option.choices if c != option.default)
    if isinstance(option.default, bool):
        return not option.default
    if option.type in (int, Optional[int]):
        return (option.default or 0) + 1
    return option.default * 2 if option.default else 0.5


@pytest.mark.parametrize("name", [name for name, cls in REGISTRY.items() if cls.READ_WHEN])
def test_an_option_the_others_leave_unread_is_refused(name):
    """``READ_WHEN``: for each option it names, and each setting of the method's choices
    (``Literal`` options), the option away from its default is refused exactly where the
    setting leaves it unread, with the words that say when it is read."""
    cls = REGISTRY[name]
    options = {o.name: o for o in options_of(cls)}
    choices = {n: o.choices for n, o in options.items() if o.choices}
    model = mlp()

    def make(given):
        return cls(torch.optim.SGD(model.parameters(), lr=0.1), model, classification_loss,
                   total_steps=TOTAL_STEPS, **given)

    refusals = 0
    for picked in itertools.product(*choices.values()):
        setting = dict(zip(choices, picked))
        try:
            make(setting)
        except ValueError:  # a choice the others leave unread: a setting of its own
            continue
        for option, (when, read) in cls.READ_WHEN.items():
            if option in setting:
                continue
            given = {**setting, option: _other_value(options[option])}
            if read({n: o.default for n, o in options.items()} | given):
                try:
                    make(given)
                except ValueError as err:  # the value may be out of its own range
                    assert "is read only" not in str(err)
                continue
            with pytest.raises(ValueError, match=rf"lr\.{option}=.* is read only {re.escape(when)}"):
                make(given)
            refusals += 1
    assert refusals


OPTIMIZERS = {
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    "sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True,
                                              weight_decay=1e-3),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=1e-3, momentum=0.5),
    "adagrad": lambda p: torch.optim.Adagrad(p, lr=1e-2),
}


def batches(n, seed=0, kind="mlp"):
    make = mlp_batch if kind == "mlp" else cnn_batch
    return [make(seed=seed + i) for i in range(n)]


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@pytest.mark.parametrize("case", list(CASES))
def test_optimizer_state_advances_exactly_once_per_step(case, opt_name):
    """Each ``method.step`` moves the parameters by one base-optimizer step (a plain
    optimizer fed the same gradients from the same state) taken at the lr the groups held
    before or after it, and leaves the optimizer's state exactly as that one step does."""
    model = mlp()
    replay_model = copy.deepcopy(model)
    opt = OPTIMIZERS[opt_name](two_groups(model))
    replay = OPTIMIZERS[opt_name](two_groups(replay_model))
    method = build(case, opt, model)
    for batch in batches(5):
        opt.zero_grad()
        loss = classification_loss(model, batch)
        loss.backward()
        before_lrs, before = method.lrs, [p.detach().clone() for p in model.parameters()]
        for p, q in zip(model.parameters(), replay_model.parameters()):
            q.data.copy_(p.data)
            q.grad = p.grad.clone()
        method.step(batch, loss=loss)
        after_lrs = method.lrs
        for lrs in (before_lrs, after_lrs):  # the step at the lr before, or else after
            state = copy.deepcopy(replay.state_dict())
            for group, lr in zip(replay.param_groups, lrs):
                group["lr"] = lr
            replay.step()
            if all(torch.allclose(p, q, rtol=1e-9, atol=1e-12)
                   for p, q in zip(model.parameters(), replay_model.parameters())):
                break
            replay.load_state_dict(state)
            for q, old in zip(replay_model.parameters(), before):
                q.data.copy_(old)
        else:
            pytest.fail(f"step {method.step_count}: not one optimizer step at lr {before_lrs} "
                        f"or {after_lrs}")
        for p, q in zip(model.parameters(), replay_model.parameters()):
            for key, value in opt.state[p].items():
                torch.testing.assert_close(torch.as_tensor(value),
                                           torch.as_tensor(replay.state[q][key]),
                                           rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("case", list(CASES))
def test_probes_leave_batchnorm_dropout_rng_and_grad_untouched(case):
    model = mlp(act=nn.ReLU, dropout=0.3, bn=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    method = build(case, opt, model)
    method.profile_every = 1
    for batch in batches(3):
        opt.zero_grad()
        loss = classification_loss(model, batch)
        loss.backward()
        buffers = [b.clone() for b in model.buffers()]
        grads = [p.grad.clone() for p in model.parameters()]
        rng = torch.get_rng_state()
        method.step(batch, loss=loss)
        for b, old in zip(model.buffers(), buffers):
            assert torch.equal(b, old)
        for p, old in zip(model.parameters(), grads):
            assert torch.equal(p.grad, old)
        assert torch.equal(torch.get_rng_state(), rng)
        assert all(m.training for m in model.modules())
        assert all(m.track_running_stats for m in model.modules() if isinstance(m, nn.BatchNorm1d))


def two_groups(model):
    """The first layer in one group, the rest in another at lr 1e-3."""
    return [{"params": list(model[0].parameters())},
            {"params": [p for m in list(model)[1:] for p in m.parameters()], "lr": 1e-3}]


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_group_ratios_are_kept(case, opt_name):
    model = mlp()
    groups = two_groups(model)
    opt = OPTIMIZERS[opt_name](groups)
    ratio = opt.param_groups[0]["lr"] / opt.param_groups[1]["lr"]
    method = build(case, opt, model)
    for batch in batches(4):
        opt.zero_grad()
        loss = classification_loss(model, batch)
        loss.backward()
        method.step(batch, loss=loss)
        lr0, lr1 = method.lrs
        assert math.isfinite(lr0) and lr0 >= 0
        if lr0 > 0:  # a schedule may end at 0
            assert lr0 / lr1 == pytest.approx(ratio, rel=1e-12)


def test_newt_per_group_steps_each_group():
    model = mlp()
    groups = two_groups(model)
    opt = torch.optim.SGD(groups, lr=0.05)
    method = Newt(opt, model, classification_loss, gamma=1.0, per_group=True,
                  lookahead_batch=None, factor_min=None, factor_max=None, scale_back=None)
    for batch in batches(3):
        opt.zero_grad()
        loss = classification_loss(model, batch)
        loss.backward()
        method.step(batch, loss=loss)
    lr0, lr1 = method.lrs
    assert abs(math.log(lr0 / lr1 / 50.0)) > 1e-3  # one shared factor would keep 50 exactly


@pytest.mark.parametrize("name", [name for name, cls in REGISTRY.items() if cls.rescales_step])
@pytest.mark.parametrize("optimizer", [torch.optim.Rprop, torch.optim.LBFGS])
def test_update_not_linear_in_lr_is_refused(name, optimizer):
    """Every method that rescales the optimizer's step refuses an optimizer whose step is
    not linear in lr."""
    model = mlp()
    with pytest.raises(IncompatibleOptimizerError, match="linear in lr"):
        REGISTRY[name](optimizer(model.parameters()), model, classification_loss,
                       total_steps=TOTAL_STEPS)


# The lr each case starts from under autocast: one its float32 run moves within the steps
# (Polyak's ratio lies above its cap, the start lr, until the start lr is large).
AUTOCAST_LR = {"polyak": 1.0}
# Newt's secant on four of the batch's 16 samples: on its default eighth (two), whether the
# lookahead loss rose, which decides a scale-back, is within bf16's rounding.
AUTOCAST_OPTIONS = {"newt": {"lookahead_batch": 0.25}}


@pytest.mark.parametrize("case", list(CASES))
def test_autocast_bf16_on_cpu(case):
    """Under bf16 autocast the probes run in the training precision and measure what they
    measure in float32: a method that rescales the step from them makes its first move at
    the same step as in float32, by the same amount to bf16's rounding (not a fallback that
    keeps the lr); any other (a schedule, a method that follows the training loss) takes the
    same lrs. Only the first move is compared: the runs start from the same state, and after
    different moves they no longer are."""
    measures = REGISTRY[case.split("/")[0]].rescales_step
    probed_under = []  # for each forward inside ``step`` (a probe), whether autocast was on

    def run(autocast, steps):
        torch.manual_seed(0)
        # tanh and average pooling: smooth, so that bf16's rounding moves a measurement by
        # little (across ReLU's and max pooling's kinks, or through BatchNorm's division by
        # a batch variance, it moves the lr by more than rounding)
        model = cnn(dtype=torch.float32)
        opt = torch.optim.AdamW(model.parameters(), lr=AUTOCAST_LR.get(case, 0.1))
        method = build(case, opt, model, **AUTOCAST_OPTIONS.get(case, {}))
        method.autocast = autocast
        if hasattr(method, "derivatives"):
            method.derivatives.autocast = autocast
        lrs = [method.last_lr]
        for x, y in batches(steps, kind="cnn"):
            batch = (x.float(), y)
            opt.zero_grad()
            with autocast():
                loss = classification_loss(model, batch)
            loss.backward()
            hook = model.register_forward_pre_hook(
                lambda *_: probed_under.append(torch.is_autocast_enabled("cpu")))
            lrs.append(method.step(batch, loss=loss))
            hook.remove()
            if measures and lrs[-1] != lrs[-2]:
                break  # the first move: what follows is compared no more
        return lrs

    full = run(contextlib.nullcontext, 4)  # newt/window moves at its second window's end
    probed_under.clear()  # the float32 run's
    low = run(lambda: torch.autocast("cpu", dtype=torch.bfloat16), len(full) - 1)
    # the probes in the training precision (a float32 reference check may run beside them)
    assert any(probed_under) or not probed_under
    assert all(math.isfinite(lr) and lr >= 0 for lr in low)
    if not measures:
        assert low == full
        return
    assert full[-1] != full[-2], f"{case} kept its lr in float32: start where it moves"
    assert low[:-1] == full[:-1]  # no move before float32's first either
    assert low[-1] - low[-2] == pytest.approx(full[-1] - full[-2], rel=0.1)


@pytest.mark.parametrize("case", list(CASES))
def test_grad_scaler_and_skipped_step(case):
    """A step the GradScaler skips moves no parameter; the lr stays too, except that of a
    schedule, which is a function of the step count (``counts_steps``)."""
    model = mlp(dtype=torch.float32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    method = build(case, opt, model)
    method.scaler = scaler
    for i, (x, y) in enumerate(batches(4)):
        batch = (x.float(), y)
        opt.zero_grad()
        loss = classification_loss(model, batch)
        scaler.scale(loss).backward()
        if i == 2:  # an overflow: the scaler skips this step, nothing may move
            next(model.parameters()).grad[0, 0] = math.inf
            lrs, params = method.lrs, [p.detach().clone() for p in model.parameters()]
            method.step(batch, loss=loss)
            if not method.counts_steps:
                assert method.lrs == lrs
            if method.rescales_step:
                assert method.diagnostics["skipped"] == 1.0
            for p, old in zip(model.parameters(), params):
                assert torch.equal(p, old)
        else:
            lr = method.step(batch, loss=loss)
            assert math.isfinite(lr) and lr > 0


@pytest.mark.parametrize("case", [case for case in CASES if REGISTRY[case.split("/")[0]].needs_loss_fn])
def test_nonfinite_probes_fall_back_and_keep_lr(case):
    """A method that may probe (``needs_loss_fn``) and does, on probes that come back NaN,
    keeps its lr; one that did not probe (Newt's zero-pass lookaheads) moved by the training
    loss alone."""
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    calls = {"n": 0}

    def poisoned(m, batch):
        calls["n"] += 1
        loss = classification_loss(m, batch)
        return loss * math.nan if calls["n"] > 1 else loss  # the training forward is fine

    method = build(case, opt, model, poisoned)
    batch = mlp_batch()
    opt.zero_grad()
    loss = poisoned(model, batch)
    loss.backward()
    lr = method.step(batch, loss=loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    if calls["n"] > 1:  # it probed
        assert lr == pytest.approx(1e-2)
        assert method.diagnostics["fallback"] == 1.0


@pytest.mark.parametrize("case", list(CASES))
def test_state_dict_round_trip_resumes_identically(case):
    """Restored from its ``state_dict`` after one step, a method ends bit for bit where an
    uninterrupted one does: the lrs, the parameters and the optimizer's state (on CPU)."""
    def run(steps, resume_from=None):
        model = mlp()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        method = build(case, opt, model)
        data = batches(7)
        start = 0
        if resume_from is not None:
            model.load_state_dict(resume_from["model"])
            opt.load_state_dict(resume_from["opt"])
            method.load_state_dict(copy.deepcopy(resume_from["method"]))
            start = resume_from["step"]
        for i in range(start, steps):  # the next batch as the probe batch, as the engine does
            opt.zero_grad()
            loss = classification_loss(model, data[i])
            loss.backward()
            method.step(data[i], loss=loss, probe_batch=data[i + 1])
        return {"model": copy.deepcopy(model.state_dict()), "opt": copy.deepcopy(opt.state_dict()),
                "method": copy.deepcopy(method.state_dict()), "step": steps, "lrs": method.lrs}

    straight = run(6)
    resumed = run(6, resume_from=run(1))  # the parabola's first fit is pending then (defer)
    assert resumed["lrs"] == straight["lrs"]  # bit for bit, as docs/design.md says
    for k, v in straight["model"].items():
        assert torch.equal(resumed["model"][k], v), k
    for p, state in straight["opt"]["state"].items():  # the moments, not only where they led
        for k, v in state.items():
            assert torch.equal(torch.as_tensor(resumed["opt"]["state"][p][k]),
                               torch.as_tensor(v)), k


@pytest.mark.parametrize("case", list(CASES))
def test_diagnostics_and_profile(case):
    """Diagnostics are floats. A method that reports a curvature has a quadratic model of
    the loss along its step: asked to, it records profiles of it, anchored at phi(0)."""
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    method = build(case, opt, model)
    method.profile_every = 2
    profiles = []
    for batch in batches(5):
        opt.zero_grad()
        loss = classification_loss(model, batch)
        loss.backward()
        method.step(batch, loss=loss)
        assert all(isinstance(v, float) for v in method.diagnostics.values())
        if (profile := method.take_profile()) is not None:
            profiles.append(profile)
    assert method.take_profile() is None  # each profile is handed over once
    assert bool(profiles) == ("curvature" in method.diagnostics)
    assert bool(profiles) == (method.passes["profile"] > 0)
    for prof in profiles:
        assert all(math.isfinite(v) for v in prof.loss)
        i0 = prof.s.index(0.0)
        assert prof.model[i0] == pytest.approx(prof.loss[i0])


def test_diagnostics_keys_per_method():
    model = mlp()
    batch = mlp_batch()
    for method_cls, keys in [(ExactGeN, {"alpha_star", "curvature", "slope", "accepted", "fallback"}),
                             (ParabolaGeN, {"alpha_star", "curvature", "r2", "accepted", "fallback"}),
                             (Newt, {"alpha_star", "curvature", "slope", "accepted", "fallback",
                                     "factor", "scaled_back"})]:
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        method = method_cls(opt, model, classification_loss)
        opt.zero_grad()
        loss = classification_loss(model, batch)
        loss.backward()
        method.step(batch, loss=loss)
        assert keys <= set(method.diagnostics), method_cls


def test_parabola_horizon_scale_and_next_batch():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    method = ParabolaGeN(opt, model, classification_loss, every=1, scale="linear",
                         probe="next", total_steps=4, rule="line_search")  # every probe deferred
    data = batches(5)
    for i in range(4):
        opt.zero_grad()
        loss = classification_loss(model, data[i])
        loss.backward()
        method.step(data[i], loss=loss, probe_batch=data[i + 1])
        assert method.diagnostics["scale"] == pytest.approx(1 - i / 4)
    # L(0) is probed too on another batch; L(+1) is the next step's training loss (defer)
    assert method.passes["forward"] == 4 * 2
    with pytest.raises(ValueError, match="total_steps"):
        ParabolaGeN(opt, model, classification_loss, scale="cosine")


@pytest.mark.parametrize("cls", [ExactGeN, ParabolaGeN])
def test_gen_scale_choices_are_the_schedules_decays(cls):
    """``scale``'s ``Literal`` (what gen-train offers) names exactly the shapes in ``DECAYS``."""
    (scale,) = [o for o in options_of(cls) if o.name == "scale"]
    assert set(scale.choices) == set(DECAYS)


def test_gen_variants_take_the_options_declared_once_on_gen_base():
    """GeN's rule options are declared on ``GeNBase.__init__`` alone (``shared_options``):
    each variant lists them, defaults and choices included, before its own; a base that is
    not marked (``WarmupDecay``, whose ``warmup`` ``Cosine`` fixes) gives none."""
    shared = options_of(GeNBase)
    assert [o.name for o in shared][:3] == ["rule", "window", "every"]
    for cls, own in ((ExactGeN, ["curvature", "curvature_batch", "check_every"]),
                     (ParabolaGeN, ["points", "r2_min", "defer"])):
        options = options_of(cls)
        assert options[:len(shared)] == shared and [o.name for o in options[len(shared):]] == own
    assert [o.name for o in options_of(Cosine)] == ["final_factor"]

    class Again(GeNBase):  # an option declared a second time is refused
        def __init__(self, optimizer, *, rule: str = "band", **shared) -> None:
            super().__init__(optimizer, **shared)

    with pytest.raises(TypeError, match="option 'rule' of .*Again is declared twice"):
        options_of(Again)


def test_gen_cosine_horizon_scale_is_the_cosine_schedules_shape():
    model = mlp()
    method = ExactGeN(torch.optim.SGD(model.parameters(), lr=0.01), model, classification_loss,
                      scale="cosine", total_steps=4)
    assert [method.horizon_scale(i) for i in range(5)] == pytest.approx(
        [1.0, 0.5 + 0.5 ** 1.5, 0.5, 0.5 - 0.5 ** 1.5, 0.0], abs=1e-15)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_method_takes_the_same_step_call(name):
    """One signature for all: ``step(batch, loss=..., probe_batch=...)``, so a training loop
    can swap methods without changing the call."""
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    method = REGISTRY[name](opt, model, classification_loss, total_steps=4)
    data = batches(3)
    for i in range(2):
        opt.zero_grad()
        loss = classification_loss(model, data[i])
        loss.backward()
        lr = method.step(data[i], loss=loss, probe_batch=data[i + 1])
        assert lr == opt.param_groups[0]["lr"] > 0  # what the optimizer holds


@pytest.mark.parametrize("case", [case for case in CASES
                                  if not REGISTRY[case.split("/")[0]].wants_probe_batch])
def test_a_probe_batch_is_read_only_where_declared(case):
    """The engine passes the next batch as ``probe_batch`` only to a method that declares
    ``wants_probe_batch``: every other one steps the same without it."""
    def run(with_probe_batch):
        model = mlp()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        method = build(case, opt, model)
        data = batches(4)
        for i in range(3):
            opt.zero_grad()
            loss = classification_loss(model, data[i])
            loss.backward()
            method.step(data[i], loss=loss, probe_batch=data[i + 1] if with_probe_batch else None)
        return method.lrs, [p.detach().clone() for p in model.parameters()]

    (lrs, params), (lrs_without, params_without) = run(True), run(False)
    assert lrs == lrs_without
    assert all(torch.equal(p, q) for p, q in zip(params, params_without))
