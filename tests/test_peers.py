"""The learning-rate-free peers train through their real packages and the engine's hooks."""

from __future__ import annotations

import copy
import math
import sys

import pytest
import torch
from torch import nn

from genlr.engine import RunSpec, TrainerConfig
from genlr.engine import train as train_run
from genlr.methods import Constant, IncompatibleOptimizerError, check_linear_in_lr
from genlr.optimizers import OPTIMIZERS, build_optimizer
from genlr.peers import (
    DAdaptSGDHooks,
    DoGHooks,
    GeNReferenceHooks,
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
    "dadapt_adam": ("dadaptation", ProdigyHooks),
    "dadapt_sgd": ("dadaptation", DAdaptSGDHooks),
    "gen_optim_adamw": ("GeN", GeNReferenceHooks),
    "gen_optim_sgd": ("GeN", GeNReferenceHooks),
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


def test_dadapt_adam_lr_is_d_times_lr():
    _, optimizer, hooks, _, _ = train("dadapt_adam")
    group = optimizer.param_groups[0]
    assert group["d"] > 1e-6  # D-Adaptation grew its estimate from d0
    assert hooks.lrs() == [group["d"] * group["lr"]]


def test_dadapt_sgd_lr_is_d_times_lr_over_the_first_gradient_norm():
    pytest.importorskip("dadaptation")
    model, x, y = problem()
    optimizer = build_optimizer("dadapt_sgd", model.parameters())
    hooks = optimizer_hooks(optimizer, model)
    assert math.isnan(hooks.lrs()[0])  # depends on the first gradient
    nn.functional.mse_loss(model(x), y).backward()
    g0 = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters()))
    optimizer.step()
    group = optimizer.param_groups[0]
    assert group["g0_norm"] == pytest.approx(g0)
    assert hooks.lrs() == [pytest.approx(group["d"] * group["lr"] / g0)]


# ------------------------------------------------------------ the authors' GeN (gen-optim)

def classifier():
    torch.manual_seed(0)
    x, y = torch.randn(96, 8), torch.randint(0, 3, (96,))
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    batches = [(x[i:i + 32], y[i:i + 32]) for i in (0, 32, 64)] * 4  # 12 steps
    return model, batches


def test_gen_optim_row_is_the_reference_readme_loop():
    """Our row (optimizer=gen_optim_adamw, lr=constant, the engine's hooks) gives exactly the
    weights and lrs of gen-optim's README loop: ``lr_parabola`` every 4th step on a batch the
    optimizer has not stepped on, then ``optimizer.step()``."""
    GeN = pytest.importorskip("GeN")
    model, batches = classifier()
    reference = copy.deepcopy(model)
    optimizer = build_optimizer("gen_optim_adamw", model.parameters())
    method, hooks = Constant(optimizer, total_steps=len(batches)), optimizer_hooks(optimizer, model)
    ref_optimizer = torch.optim.AdamW(reference.parameters(), lr=1e-3, weight_decay=0.01)
    lrs = set()
    for step, ((x, y), upcoming) in enumerate(zip(batches, batches[1:] + [None])):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        hooks.before_step(upcoming)
        method.step((x, y), loss=loss)

        nn.functional.cross_entropy(reference(x), y).backward()
        if (step + 1) % 4 == 0 and upcoming is not None:
            GeN.lr_parabola(reference, ref_optimizer, tr_iter=iter([upcoming]), device="cpu",
                            task="image_cls")
        ref_optimizer.step()
        ref_optimizer.zero_grad()
        for p, q in zip(model.parameters(), reference.parameters()):
            assert torch.equal(p, q), step
        assert hooks.lrs() == [ref_optimizer.param_groups[0]["lr"]]
        lrs.add(hooks.lrs()[0])
    assert len(lrs) >= 3  # it probed and moved the lr (steps 4 and 8; 12 is the last)


def train_through_hooks(optimizer, model, batches, probe_batch):
    """Cross-entropy steps as the engine takes them, each handing ``probe_batch`` to the
    optimizer's hooks first."""
    hooks = optimizer_hooks(optimizer, model)
    for x, y in batches:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        hooks.before_step(probe_batch)
        optimizer.step()


def test_gen_optim_steps_its_optimizer_twice_on_a_probe_step():
    """The reference's double step, left as it is: AdamW's step count runs ahead by one per
    probe."""
    pytest.importorskip("GeN")
    model, batches = classifier()
    optimizer = build_optimizer("gen_optim_adamw", model.parameters())
    train_through_hooks(optimizer, model, batches[:8], probe_batch=batches[0])
    assert optimizer.steps == 8
    assert float(optimizer.state[model[0].weight]["step"]) == 8 + 2  # probes at steps 4 and 8


def test_gen_optim_state_round_trips():
    pytest.importorskip("GeN")
    model, batches = classifier()
    optimizer = build_optimizer("gen_optim_sgd", model.parameters(), every=2)
    train_through_hooks(optimizer, model, batches[:5], probe_batch=batches[1])
    fresh = build_optimizer("gen_optim_sgd", model.parameters(), every=2)
    fresh.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    assert fresh.steps == 5
    assert fresh.base.param_groups[0]["lr"] == optimizer.base.param_groups[0]["lr"] != 0.1
    for p in model.parameters():
        assert torch.equal(fresh.state[p]["momentum_buffer"], optimizer.state[p]["momentum_buffer"])


def test_gen_optim_trains_through_the_engine(tmp_path):
    pytest.importorskip("GeN")
    spec = RunSpec(task={"name": "logreg"}, model={"name": "mlp"},
                   optimizer={"name": "gen_optim_adamw", "every": 2}, lr={"name": "constant"},
                   trainer=TrainerConfig(max_steps=6, batch_size=64, progress=False, plots=False,
                                         device="cpu"))
    summary = train_run(spec, tmp_path / "run")
    assert summary["status"] == "completed"
    assert summary["lr"]["initial"] == 1e-3 != summary["lr"]["final"]  # probes at steps 2, 4
