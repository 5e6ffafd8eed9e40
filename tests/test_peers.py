"""The learning-rate-free peers train through their real packages and the engine's hooks."""

from __future__ import annotations

import math
import sys

import pytest
import torch
from torch import nn

from genlr.methods import Constant, IncompatibleOptimizerError, check_linear_in_lr
from genlr.optimizers import OPTIMIZERS, build_optimizer
from genlr.peers import (
    DoGHooks,
    OptimizerHooks,
    ProdigyHooks,
    ScheduleFreeHooks,
    optimizer_hooks,
)

PEERS = {
    "prodigy": ("prodigyopt", ProdigyHooks),
    "schedulefree_adamw": ("schedulefree", ScheduleFreeHooks),
    "schedulefree_sgd": ("schedulefree", ScheduleFreeHooks),
    "dog": ("dog", DoGHooks),
    "ldog": ("dog", DoGHooks),
}


def problem():
    torch.manual_seed(0)
    x = torch.randn(128, 8)
    y = (x @ torch.randn(8, 1)).tanh() + 0.05 * torch.randn(128, 1)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    return model, x, y


def train(name: str, steps: int = 40):
    pytest.importorskip(PEERS[name][0])
    model, x, y = problem()
    optimizer = build_optimizer(name, model.parameters())
    method = Constant(optimizer, total_steps=steps)
    hooks = optimizer_hooks(optimizer, model)
    hooks.train()
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        method.step(loss=loss)
        hooks.after_step()
        losses.append(loss.item())
    return model, optimizer, hooks, losses, (x, y)


@pytest.mark.parametrize("name", list(PEERS))
def test_peer_trains_through_its_hooks(name):
    model, optimizer, hooks, losses, (x, y) = train(name)
    assert isinstance(hooks, PEERS[name][1])
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]
    lrs = hooks.lrs()
    assert len(lrs) == len(optimizer.param_groups)
    assert all(isinstance(v, float) and v > 0 and math.isfinite(v) for v in lrs)
    hooks.eval()
    with hooks.eval_model() as m, torch.no_grad():
        assert math.isfinite(nn.functional.mse_loss(m(x), y).item())
    hooks.train()


def test_prodigy_lr_is_d_times_lr():
    _, optimizer, hooks, _, _ = train("prodigy")
    group = optimizer.param_groups[0]
    assert group["d"] > group["d0"]  # Prodigy grew its estimate
    assert hooks.lrs() == [group["d"] * group["lr"]]


@pytest.mark.parametrize("name", ["schedulefree_adamw", "schedulefree_sgd"])
def test_schedulefree_train_eval_toggle(name):
    model, optimizer, hooks, _, _ = train(name)
    y_point = [p.detach().clone() for p in model.parameters()]
    hooks.eval()
    assert not optimizer.param_groups[0]["train_mode"]
    x_point = [p.detach().clone() for p in model.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(y_point, x_point))
    hooks.eval()  # idempotent
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), x_point))
    hooks.train()
    assert optimizer.param_groups[0]["train_mode"]
    for p, a in zip(model.parameters(), y_point):
        torch.testing.assert_close(p.detach(), a)
    assert hooks.lrs() == [optimizer.param_groups[0]["scheduled_lr"]]


def test_schedulefree_warmup_lr_logged():
    pytest.importorskip("schedulefree")
    model, x, y = problem()
    optimizer = build_optimizer("schedulefree_adamw", model.parameters(), warmup_steps=10)
    hooks = optimizer_hooks(optimizer, model)
    assert hooks.lrs() == [pytest.approx(0.0025 / 10)]
    hooks.train()
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    assert hooks.lrs() == [pytest.approx(0.0025 * 3 / 10)]


@pytest.mark.parametrize("name", ["dog", "ldog"])
def test_dog_evaluates_averaged_weights(name):
    model, optimizer, hooks, _, _ = train(name)
    with hooks.eval_model() as m:
        assert m is not model
        averaged = [p.detach().clone() for p in m.parameters()]
    assert any(not torch.allclose(a, p) for a, p in zip(averaged, model.parameters()))
    eta = optimizer.param_groups[0]["eta"]
    assert hooks.lrs()[0] == pytest.approx(sum(float(e) for e in eta) / len(eta))

    state = hooks.state_dict()
    fresh = optimizer_hooks(optimizer, model)
    fresh.load_state_dict(state)
    assert fresh.averager.t == hooks.averager.t
    with fresh.eval_model() as m:
        for a, p in zip(averaged, m.parameters()):
            torch.testing.assert_close(p.detach(), a)


def test_dog_averager_gamma_option():
    pytest.importorskip("dog")
    model, _, _ = problem()
    optimizer = build_optimizer("dog", model.parameters(), averager_gamma=2.0)
    assert optimizer_hooks(optimizer, model).averager.gamma == 2.0


def test_dog_lr_before_first_step_is_unknown_unless_init_eta():
    pytest.importorskip("dog")
    model, _, _ = problem()
    hooks = optimizer_hooks(build_optimizer("dog", model.parameters()), model)
    assert math.isnan(hooks.lrs()[0])
    hooks = optimizer_hooks(build_optimizer("dog", model.parameters(), init_eta=1e-3), model)
    assert hooks.lrs() == [1e-3]


def test_plain_optimizers_get_noop_hooks():
    model, _, _ = problem()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3)
    hooks = optimizer_hooks(optimizer, model)
    assert type(hooks) is OptimizerHooks
    hooks.train(); hooks.eval(); hooks.after_step()
    with hooks.eval_model() as m:
        assert m is model
    assert hooks.lrs() == [0.3] and hooks.state_dict() == {}


@pytest.mark.parametrize("name", list(PEERS))
def test_gen_style_methods_refuse_peers(name):
    """Peers are not linear in lr, so rescaling their step (GeN, Newt) is refused."""
    pytest.importorskip(PEERS[name][0])
    model, _, _ = problem()
    with pytest.raises(IncompatibleOptimizerError, match="linear in lr"):
        check_linear_in_lr(build_optimizer(name, model.parameters()), "ParabolaGeN")


def test_missing_package_is_a_one_line_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "prodigyopt", None)  # import prodigyopt now fails
    model, _, _ = problem()
    with pytest.raises(ImportError, match="pip install prodigyopt"):
        OPTIMIZERS["prodigy"](model.parameters())
