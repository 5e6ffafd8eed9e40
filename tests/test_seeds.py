"""Each seed algorithm, written out here in float64, replayed step for step against the
method at its reference settings (``genlr.methods.SEEDS``): the parameters and the lr of
every step agree to 1e-9.

The problem is a multinomial logistic regression on four fixed batches, cycled; the
direction of each step comes from a twin of the method's optimizer (the rule, not the
optimizer, is what is written out), whose state advances once per step as the method's.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from genlr import ExactGeN, Newt, ParabolaGeN
from genlr.methods import SEEDS

STEPS = 24


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(32, 5, generator=g, dtype=torch.float64),
             torch.randint(0, 3, (32,), generator=g)) for _ in range(4)]


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(5, 3).to(torch.float64)


def loss_fn(net: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(net(x), y)


def flat(net: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


def set_flat(net: nn.Module, theta: torch.Tensor) -> None:
    with torch.no_grad():
        i = 0
        for p in net.parameters():
            p.copy_(theta[i:i + p.numel()].view_as(p))
            i += p.numel()


def loss_at(net: nn.Module, theta: torch.Tensor, batch) -> float:
    twin = copy.deepcopy(net)
    set_flat(twin, theta)
    with torch.no_grad():
        return float(loss_fn(twin, batch))


def gradient_at(net: nn.Module, theta: torch.Tensor, batch) -> torch.Tensor:
    twin = copy.deepcopy(net)
    set_flat(twin, theta)
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss_fn(twin, batch),
                                                                 list(twin.parameters()))])


def hessian_at(net: nn.Module, theta: torch.Tensor, batch) -> torch.Tensor:
    shapes = [p.shape for p in net.parameters()]

    def f(vector):
        params, i = [], 0
        for shape in shapes:
            params.append(vector[i:i + math.prod(shape)].view(shape))
            i += math.prod(shape)
        return loss_fn(lambda x: F.linear(x, *params), batch)

    return torch.autograd.functional.hessian(f, theta)


def optimizer_step(net: nn.Module, optimizer, batch) -> torch.Tensor:
    """The optimizer's step ``d`` at ``theta`` on ``batch`` (taken: ``theta - d`` after)."""
    before = flat(net)
    optimizer.zero_grad()
    loss_fn(net, batch).backward()
    optimizer.step()
    return before - flat(net)


def run_method(method_cls, make_optimizer, options) -> list[tuple[torch.Tensor, float]]:
    net, data = model(), batches()
    optimizer = make_optimizer(net)
    method = method_cls(optimizer, net, loss_fn, **options)
    trajectory = []
    for t in range(STEPS):
        batch, upcoming = data[t % 4], data[(t + 1) % 4]
        optimizer.zero_grad()
        loss = loss_fn(net, batch)
        loss.backward()
        lr = method.step(batch, loss=loss, probe_batch=upcoming)
        trajectory.append((flat(net), lr))
    return trajectory


def assert_same(trajectory, reference) -> None:
    assert len(trajectory) == len(reference) == STEPS
    for t, ((theta, lr), (theta_ref, lr_ref)) in enumerate(zip(trajectory, reference)):
        assert lr == pytest.approx(lr_ref, rel=1e-9, abs=0), f"lr at step {t}"
        torch.testing.assert_close(theta, theta_ref, rtol=1e-9, atol=1e-12,
                                   msg=f"parameters at step {t}")


def adam(net: nn.Module, lr: float = 0.05) -> torch.optim.Optimizer:
    return torch.optim.Adam(net.parameters(), lr=lr)


def test_exact_gen_seed_is_the_generalized_newton_step():
    """Bu & Xu's exact GeN: each step at ``lr = <g, d> / (d^T H d) lr`` on its own batch."""
    net, data = model(), batches()
    optimizer = adam(net)
    reference = []
    for t in range(STEPS):
        batch = data[t % 4]
        theta, lr = flat(net), optimizer.param_groups[0]["lr"]
        d = optimizer_step(net, optimizer, batch)
        g, hessian = gradient_at(net, theta, batch), hessian_at(net, theta, batch)
        new_lr = lr * float(g @ d) / float(d @ hessian @ d)
        set_flat(net, theta - new_lr / lr * d)
        optimizer.param_groups[0]["lr"] = new_lr
        reference.append((flat(net), new_lr))
    options = {**SEEDS["gen_exact"].options, "curvature": "double_backward"}
    assert_same(run_method(ExactGeN, adam, options), reference)


def test_parabola_gen_seed_is_the_papers_algorithm():
    """Bu & Xu's Algorithm 1 as the authors' ``lr_parabola`` runs it: every 4th step, the
    next batch's loss at ``theta - r d`` for ``r`` in -1, 1, 0, the parabola
    ``a x^2 / 2 - b x`` (``x = r lr``) through them, and where ``a, b > 0``
    ``lr <- 0.9 lr + 0.1 clamp(b / a, lr / 2, 2 lr)``; the step is taken at the new lr."""
    net, data = model(), batches()
    optimizer = adam(net, lr=0.01)  # far enough below alpha* for the clamp to act
    reference, clamped = [], 0
    for t in range(STEPS):
        batch, upcoming = data[t % 4], data[(t + 1) % 4]
        theta, lr = flat(net), optimizer.param_groups[0]["lr"]
        d = optimizer_step(net, optimizer, batch)
        if t % 4 == 0:
            ratios = torch.tensor([-1.0, 1.0, 0.0], dtype=torch.float64)
            losses = torch.tensor([loss_at(net, theta - float(r) * d, upcoming) for r in ratios],
                                  dtype=torch.float64)
            x, y = ratios[:2] * lr, losses[:2] - losses[2]
            design = torch.stack([0.5 * x * x, -x], dim=1)
            a, b = (float(v) for v in torch.linalg.solve(design, y))
            if a > 0 and b > 0:
                clamped += not lr / 2 <= b / a <= 2 * lr
                new_lr = 0.9 * lr + 0.1 * min(max(b / a, lr / 2), 2 * lr)
                set_flat(net, theta - new_lr / lr * d)
                optimizer.param_groups[0]["lr"] = new_lr
        reference.append((flat(net), optimizer.param_groups[0]["lr"]))
    assert clamped > 0  # the clamp was exercised
    assert_same(run_method(ParabolaGeN, lambda n: adam(n, lr=0.01), SEEDS["gen_parabola"].options),
                reference)


def test_newt_seed_is_the_reference_implementation():
    """Retsinas et al.'s Newt with the reference's constants: the gradient ``g'`` at the
    step's end on the same batch, ``lr *= clamp(1 + 1e-3 <g', u> / (<g - g', u> + 1e-9),
    0, 1.05)`` (``u = d / lr``; a curvature below eps keeps the lr), x0.1 whenever the loss
    there rose, the lr within [1e-7, 1]."""
    sgd = lambda n: torch.optim.SGD(n.parameters(), lr=8.0)  # high enough for the loss to rise
    net, data = model(), batches()
    optimizer = sgd(net)
    reference, scaled_back = [], 0
    for t in range(STEPS):
        batch = data[t % 4]
        theta, lr = flat(net), optimizer.param_groups[0]["lr"]
        loss0 = loss_at(net, theta, batch)
        d = optimizer_step(net, optimizer, batch)
        g0, g1 = gradient_at(net, theta, batch), gradient_at(net, theta - d, batch)
        loss1 = loss_at(net, theta - d, batch)
        u = d / lr
        num, den = float(g1 @ u), float((g0 - g1) @ u)
        if loss1 > loss0:
            factor, scaled_back = 0.1, scaled_back + 1
        elif den < 1e-9:
            factor = 1.0
        else:
            factor = min(max(1.0 + 1e-3 * num / (den + 1e-9), 0.0), 1.05)
        optimizer.param_groups[0]["lr"] = min(max(lr * factor, 1e-7), 1.0)
        reference.append((flat(net), optimizer.param_groups[0]["lr"]))
    assert 0 < scaled_back < STEPS  # both branches exercised
    assert_same(run_method(Newt, sgd, SEEDS["newt"].options), reference)


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_every_seed_names_a_method_and_options_it_takes(name):
    from genlr.methods import METHODS
    from genlr.options import check_options, options_of

    seed = SEEDS[name]
    assert seed.method == name and seed.source and seed.rule
    check_options("lr", name, options_of(METHODS[name]), seed.options)
