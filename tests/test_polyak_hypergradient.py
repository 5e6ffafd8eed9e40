"""Polyak (SPS_max) and hypergradient descent against hand-computed steps on a quadratic.

f(theta) = 1/2 theta^T A theta - b^T theta, gradient A theta - b, all in float64.
"""

from __future__ import annotations

import math

import pytest
import torch

from genlr.methods import Hypergradient, IncompatibleOptimizerError, Polyak, build_lr_method

A = torch.tensor([[3.0, 0.5, 0.0], [0.5, 2.0, 0.3], [0.0, 0.3, 1.0]], dtype=torch.float64)
B = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
THETA0 = torch.tensor([2.0, 1.0, -1.5], dtype=torch.float64)
F_MIN = float(-0.5 * B @ torch.linalg.solve(A, B))


def f(theta: torch.Tensor) -> float:
    return float(0.5 * theta @ A @ theta - B @ theta)


def grad(theta: torch.Tensor) -> torch.Tensor:
    return A @ theta - B


def backward(param: torch.nn.Parameter) -> torch.Tensor:
    """Fill param.grad through autograd (as training does); return the loss."""
    param.grad = None
    loss = 0.5 * param @ A @ param - B @ param
    loss.backward()
    return loss


def test_registered():
    """``lr=polyak`` and ``lr=hypergradient`` build these methods with the options given, as
    gen-train's engine builds them (``build_lr_method``), not their defaults."""
    opt = torch.optim.SGD([torch.nn.Parameter(THETA0.clone())], lr=0.1)
    polyak = build_lr_method("polyak", opt, c=0.2, f_star=-1.0, lr_max=2.0, growth=1.5, eps=1e-9)
    assert type(polyak) is Polyak
    assert (polyak.c, polyak.f_star, polyak.lr_max, polyak.growth, polyak.eps) == (
        0.2, -1.0, 2.0, 1.5, 1e-9)
    hyper = build_lr_method("hypergradient", opt, beta=0.01, rule="multiplicative",
                            lr_min=1e-4, lr_max=2.0)
    assert type(hyper) is Hypergradient
    assert (hyper.beta, hyper.rule, hyper.lr_min, hyper.lr_max) == (
        0.01, "multiplicative", 1e-4, 2.0)


# ----------------------------------------------------------------------------- Polyak
@pytest.mark.parametrize("lr_max", [10.0, 0.05])  # uncapped, then capped
def test_polyak_sgd_step_is_sps_max(lr_max):
    theta = torch.nn.Parameter(THETA0.clone())
    opt = torch.optim.SGD([theta], lr=0.1)
    method = Polyak(opt, c=0.5, f_star=F_MIN, lr_max=lr_max)
    loss = backward(theta)
    lr = method.step(loss=loss)

    g = grad(THETA0)
    expected = min((f(THETA0) - F_MIN) / (0.5 * float(g @ g)), lr_max)
    assert lr == pytest.approx(expected, rel=1e-12)
    torch.testing.assert_close(theta.detach(), THETA0 - expected * g, rtol=1e-12, atol=1e-12)
    assert method.diagnostics["capped"] == float(lr_max == 0.05)
    assert method.diagnostics["polyak_step"] == pytest.approx(
        (f(THETA0) - F_MIN) / (0.5 * float(g @ g)), rel=1e-12)


def test_polyak_adam_uses_preconditioned_norm():
    theta = torch.nn.Parameter(THETA0.clone())
    opt = torch.optim.Adam([theta], lr=1.0, eps=1e-8)
    method = Polyak(opt, c=0.5, f_star=F_MIN, lr_max=100.0)
    lr = method.step(loss=backward(theta))
    g = grad(THETA0)
    d_hat = g / (g.abs() + 1e-8)  # Adam's first step per unit lr
    expected = (f(THETA0) - F_MIN) / (0.5 * float(g @ d_hat))
    assert lr == pytest.approx(expected, rel=1e-10)
    torch.testing.assert_close(theta.detach(), THETA0 - expected * d_hat, rtol=1e-10, atol=1e-10)


def test_polyak_below_f_star_takes_no_step_and_recovers():
    theta = torch.nn.Parameter(THETA0.clone())
    opt = torch.optim.SGD([theta], lr=0.1)
    method = Polyak(opt, f_star=1e6)
    assert method.step(loss=backward(theta)) == 0.0
    torch.testing.assert_close(theta.detach(), THETA0)
    method.f_star = F_MIN  # a later step is measured at lr_max, not at the 0 lr
    assert method.step(loss=backward(theta)) > 0


def test_polyak_group_ratios_kept():
    a = torch.nn.Parameter(THETA0[:2].clone())
    b = torch.nn.Parameter(THETA0[2:].clone())
    opt = torch.optim.SGD([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.2}])
    method = Polyak(opt, f_star=F_MIN, lr_max=10.0)
    theta = torch.cat([a, b])
    loss = 0.5 * theta @ A @ theta - B @ theta
    loss.backward()
    lr = method.step(loss=loss)
    g = grad(THETA0)
    d_hat = torch.cat([g[:2], 2 * g[2:]])  # per unit group-0 lr
    expected = (f(THETA0) - F_MIN) / (0.5 * float(g @ d_hat))
    assert lr == pytest.approx(expected, rel=1e-12)
    assert opt.param_groups[1]["lr"] == pytest.approx(2 * expected, rel=1e-12)


def test_polyak_errors():
    theta = torch.nn.Parameter(THETA0.clone())
    opt = torch.optim.SGD([theta], lr=0.1)
    with pytest.raises(ValueError, match="needs the training loss"):
        backward(theta)
        Polyak(opt).step()
    with pytest.raises(ValueError, match="c must be positive"):
        Polyak(opt, c=0.0)
    with pytest.raises(ValueError, match="lr_max"):
        Polyak(opt, lr_max=-1.0)


def test_polyak_state_round_trip():
    theta = torch.nn.Parameter(THETA0.clone())
    method = Polyak(torch.optim.SGD([theta], lr=0.1), f_star=F_MIN, growth=2.0)
    method.step(loss=backward(theta))
    other = Polyak(torch.optim.SGD([theta], lr=0.1), f_star=F_MIN, growth=2.0)
    other.load_state_dict(method.state_dict())
    assert other.last_gamma == method.last_gamma and other.step_count == 1


# ---------------------------------------------------------------------- hypergradient
def test_hypergradient_sgd_two_steps():
    alpha0, beta = 0.1, 0.01
    theta = torch.nn.Parameter(THETA0.clone())
    method = Hypergradient(torch.optim.SGD([theta], lr=alpha0), beta=beta)
    method.step(loss=backward(theta))
    lr = method.step(loss=backward(theta))

    # SGD-HD: alpha_t = alpha_{t-1} + beta g_t . g_{t-1}; the first step keeps alpha0
    g0 = grad(THETA0)
    theta1 = THETA0 - alpha0 * g0
    g1 = grad(theta1)
    alpha2 = alpha0 + beta * float(g1 @ g0)
    assert lr == pytest.approx(alpha2, rel=1e-12)
    torch.testing.assert_close(theta.detach(), theta1 - alpha2 * g1, rtol=1e-12, atol=1e-12)
    assert method.diagnostics["hypergradient"] == pytest.approx(-float(g1 @ g0), rel=1e-12)


def test_hypergradient_adam_two_steps():
    alpha0, beta, b1, b2, eps = 0.05, 1e-3, 0.9, 0.999, 1e-8
    theta = torch.nn.Parameter(THETA0.clone())
    opt = torch.optim.Adam([theta], lr=alpha0, betas=(b1, b2), eps=eps)
    method = Hypergradient(opt, beta=beta)
    method.step(loss=backward(theta))
    lr = method.step(loss=backward(theta))

    # Adam-HD: alpha_t = alpha_{t-1} + beta g_t . m_hat_{t-1} / (sqrt(v_hat_{t-1}) + eps)
    g0 = grad(THETA0)
    m1, v1 = (1 - b1) * g0, (1 - b2) * g0**2
    u1 = (m1 / (1 - b1)) / ((v1 / (1 - b2)).sqrt() + eps)
    theta1 = THETA0 - alpha0 * u1
    g1 = grad(theta1)
    alpha2 = alpha0 + beta * float(g1 @ u1)
    m2, v2 = b1 * m1 + (1 - b1) * g1, b2 * v1 + (1 - b2) * g1**2
    u2 = (m2 / (1 - b1**2)) / ((v2 / (1 - b2**2)).sqrt() + eps)
    assert lr == pytest.approx(alpha2, rel=1e-10)
    torch.testing.assert_close(theta.detach(), theta1 - alpha2 * u2, rtol=1e-10, atol=1e-10)


def test_hypergradient_multiplicative_sgd():
    alpha0, beta = 0.1, 0.05
    theta = torch.nn.Parameter(THETA0.clone())
    method = Hypergradient(torch.optim.SGD([theta], lr=alpha0), beta=beta, rule="multiplicative")
    method.step(loss=backward(theta))
    lr = method.step(loss=backward(theta))
    g0 = grad(THETA0)
    g1 = grad(THETA0 - alpha0 * g0)
    cos = float(g1 @ g0) / math.sqrt(float(g1 @ g1) * float(g0 @ g0))
    assert lr == pytest.approx(alpha0 * (1 + beta * cos), rel=1e-12)


def test_hypergradient_clamps_at_zero_and_recovers():
    theta = torch.nn.Parameter(THETA0.clone())
    # an lr far too large makes g1 . g0 < 0; a huge beta drives alpha below 0
    method = Hypergradient(torch.optim.SGD([theta], lr=1.5), beta=10.0)
    method.step(loss=backward(theta))
    assert method.step(loss=backward(theta)) == 0.0
    assert len(method.unit_direction) == 1  # measured at the last positive alpha
    assert math.isfinite(method.step(loss=backward(theta)))


def test_hypergradient_defaults_and_errors():
    theta = torch.nn.Parameter(THETA0.clone())
    assert Hypergradient(torch.optim.SGD([theta], lr=0.1)).beta == 1e-3
    assert Hypergradient(torch.optim.Adam([theta], lr=0.1)).beta == 1e-7
    with pytest.raises(ValueError, match="lr.rule='exp': choose one of: additive, multiplicative"):
        Hypergradient(torch.optim.SGD([theta], lr=0.1), rule="exp")
    with pytest.raises(ValueError, match="beta must be"):
        Hypergradient(torch.optim.SGD([theta], lr=0.1), beta=-1.0)


def test_hypergradient_state_round_trip_resumes_exactly():
    theta = torch.nn.Parameter(THETA0.clone())
    opt = torch.optim.Adam([theta], lr=0.05)
    method = Hypergradient(opt, beta=1e-3)
    method.step(loss=backward(theta))
    saved = {"theta": theta.detach().clone(), "opt": opt.state_dict(), "method": method.state_dict()}
    expected = method.step(loss=backward(theta))

    theta2 = torch.nn.Parameter(saved["theta"])
    opt2 = torch.optim.Adam([theta2], lr=0.05)
    opt2.load_state_dict(saved["opt"])
    resumed = Hypergradient(opt2, beta=1e-3)
    resumed.load_state_dict(saved["method"])
    assert resumed.step(loss=backward(theta2)) == pytest.approx(expected, rel=1e-14)


@pytest.mark.parametrize("cls", [Polyak, Hypergradient])
def test_refuses_optimizers_not_linear_in_lr(cls):
    prodigyopt = pytest.importorskip("prodigyopt")
    theta = torch.nn.Parameter(THETA0.clone())
    with pytest.raises(IncompatibleOptimizerError):
        cls(prodigyopt.Prodigy([theta]))
