"""Analytic correctness of ExactGeN, ParabolaGeN and Newt (float64)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from genlr import ExactGeN, Newt, ParabolaGeN
from genlr.curvature.directional import PATHS, DirectionalDerivatives
from genlr.methods.gen_base import FIRST_LANDING
from methods_helpers import (
    Quadratic, central_second_difference, classification_loss, cnn, cnn_batch,
    exact_line_search, mlp, mlp_batch, mse_loss, quadratic_loss,
)

MODES = list(PATHS)


def train_step(model, loss_fn, batch, optimizer):
    optimizer.zero_grad()
    loss = loss_fn(model, batch)
    loss.backward()
    return loss


@pytest.mark.parametrize("mode", MODES)
def test_exact_gen_is_exact_line_search_on_quadratic(mode):
    model = Quadratic()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    method = ExactGeN(opt, model, quadratic_loss, rule="line_search", every=1, smoothing=0.0,
                      max_factor=None, curvature=mode)
    for _ in range(4):
        expected = exact_line_search(model)
        loss = train_step(model, quadratic_loss, None, opt)
        lr = method.step(None, loss=loss)
        assert lr == pytest.approx(expected, rel=1e-6)
        assert method.diagnostics["accepted"] == 1.0
        assert method.diagnostics["alpha_star"] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("points", [[-1.0, 0.0, 1.0], [-2.0, -1.0, 0.0, 1.0, 2.0], [0.0, 0.5, 2.0]])
def test_parabola_gen_is_exact_line_search_on_quadratic(points):
    model = Quadratic()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    method = ParabolaGeN(opt, model, quadratic_loss, rule="line_search", points=points, every=1,
                         smoothing=0.0, max_factor=None)  # a fit at every probe
    for _ in range(4):
        expected = exact_line_search(model)
        loss = train_step(model, quadratic_loss, None, opt)
        assert method.step(None, loss=loss) == pytest.approx(expected, rel=1e-6)
        assert method.diagnostics["r2"] == pytest.approx(1.0, abs=1e-9)
    # two extra forwards per step with the symmetric three points (L(0) reused)
    if points == [-1.0, 0.0, 1.0]:
        assert method.passes["forward"] == 2 * 4


@pytest.mark.parametrize("approx", ["secant", "taylor"])
@pytest.mark.parametrize("lookahead_batch", [None, 0.5])
def test_newt_gives_line_search_step_one_iteration_later(approx, lookahead_batch):
    model = Quadratic()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    method = Newt(opt, model, quadratic_loss, gamma=1.0, approx=approx, factor_min=None,
                  factor_max=None, scale_back=None, lr_min=None, lr_max=None, eps=0.0,
                  lookahead_batch=lookahead_batch)
    for _ in range(4):
        expected = exact_line_search(model)  # for the gradient of this step
        loss = train_step(model, quadratic_loss, None, opt)
        assert method.step(None, loss=loss) == pytest.approx(expected, rel=1e-6)


def test_zero_pass_newt_gives_line_search_step_at_the_next_step():
    model = Quadratic()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    method = Newt(opt, model, quadratic_loss, gamma=1.0, factor_min=None, factor_max=None,
                  scale_back=None, lr_min=None, lr_max=None, eps=0.0, lookahead="next_step")
    previous = None
    for _ in range(4):
        expected = exact_line_search(model)
        loss = train_step(model, quadratic_loss, None, opt)
        lr = method.step(None, loss=loss)
        if previous is not None:  # this step ran at the lr from the previous step's line search
            assert lr == pytest.approx(previous, rel=1e-6)
        previous = expected
    assert method.passes["forward"] == method.passes["backward"] == 0


@pytest.mark.parametrize("mode", MODES)
def test_linear_model_curvature_is_closed_form(mode):
    torch.manual_seed(0)
    model = nn.Linear(5, 1).double()
    x = torch.randn(40, 5, dtype=torch.float64)
    y = torch.randn(40, dtype=torch.float64)
    params = list(model.parameters())
    d = [torch.randn_like(p) for p in params]
    # L = mean((x w + b - y)^2) / 2  =>  d^T H d = mean((x dw + db)^2)
    expected = float(((x @ d[0].T).squeeze(-1) + d[1]).pow(2).mean())
    got = DirectionalDerivatives(model, mse_loss).curvature(params, d, (x, y), mode)
    assert got == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_curvature_matches_central_differences(kind, mode):
    model, batch = (mlp(), mlp_batch()) if kind == "mlp" else (cnn(), cnn_batch())
    params = list(model.parameters())
    torch.manual_seed(3)
    d = [0.1 * torch.randn_like(p) for p in params]
    expected = central_second_difference(model, classification_loss, batch, d)
    got = DirectionalDerivatives(model, classification_loss).curvature(params, d, batch, mode)
    assert got == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_curvature_modes_agree_on_relu_batchnorm_maxpool(kind):
    if kind == "mlp":
        model, batch = mlp(act=nn.ReLU, bn=True), mlp_batch()
    else:
        model, batch = cnn(act=nn.ReLU, pool=nn.MaxPool2d, bn=True), cnn_batch()
    params = list(model.parameters())
    torch.manual_seed(4)
    d = [torch.randn_like(p) for p in params]
    dd = DirectionalDerivatives(model, classification_loss)
    values = [dd.curvature(params, d, batch, mode) for mode in MODES]
    for v in values[1:]:
        assert v == pytest.approx(values[0], rel=1e-9)


class PartlyMoving(nn.Module):
    """Layers where only some operands move: a grouped conv without bias, a conv whose
    weight is frozen (only its bias moves), a linear layer through ``torch.addmm`` with
    alpha and beta, and a product of two moving values."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.grouped = nn.Conv2d(2, 4, 3, padding=1, groups=2, bias=False).double()
        self.frozen = nn.Conv2d(4, 4, 1).double()
        self.frozen.weight.requires_grad_(False)
        self.w = nn.Parameter(0.1 * torch.randn(4 * 6 * 6, 3, dtype=torch.float64))
        self.b = nn.Parameter(torch.randn(3, dtype=torch.float64))
        self.gate = nn.Linear(4 * 6 * 6, 3).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.frozen(self.grouped(x))).flatten(1)
        return torch.addmm(self.b, h, self.w, beta=0.5, alpha=2.0) * torch.tanh(self.gate(h))


@pytest.mark.parametrize("mode", ["taylor", "forward_over_reverse"])
def test_curvature_when_only_some_operands_move(mode):
    model = PartlyMoving()
    torch.manual_seed(6)
    batch = (torch.randn(8, 2, 6, 6, dtype=torch.float64), torch.randint(0, 3, (8,)))
    params = [p for p in model.parameters() if p.requires_grad]
    d = [0.1 * torch.randn_like(p) for p in params]
    dd = DirectionalDerivatives(model, classification_loss)
    reference = dd.derivatives(params, d, batch, "double_backward")
    slope, curvature = dd.derivatives(params, d, batch, mode)
    assert slope == pytest.approx(reference[0], rel=1e-9)
    assert curvature == pytest.approx(reference[1], rel=1e-9)


@pytest.mark.parametrize("mode", ["taylor", "double_backward", "forward_over_reverse"])
def test_batchnorm_curvature_matches_central_differences(mode):
    from genlr.curvature import probe_mode

    model, batch = mlp(bn=True), mlp_batch()
    params = list(model.parameters())
    torch.manual_seed(3)
    d = [0.1 * torch.randn_like(p) for p in params]
    with probe_mode(model):  # batch statistics, as the curvature pass uses them
        expected = central_second_difference(model, classification_loss, batch, d)
    got = DirectionalDerivatives(model, classification_loss).curvature(params, d, batch, mode)
    assert got == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("bn", [False, True])
def test_taylor_under_bf16_autocast_matches_double_backward(bn):
    """Taylor mode follows the trace's autocast casts (no fallback needed): on CPU bf16 it
    agrees with double backward under the same autocast, within bf16 precision (about three
    significant digits per op: both are 5-25% off the float32 value on this small CNN)."""
    torch.manual_seed(5)
    model = cnn(dtype=torch.float32, act=nn.ReLU, pool=nn.MaxPool2d, bn=bn)
    x, y = cnn_batch(n=32, dtype=torch.float32)
    params = list(model.parameters())
    d = [0.1 * torch.randn_like(p) for p in params]

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16)

    dd = DirectionalDerivatives(model, classification_loss, autocast)
    taylor = dd.curvature(params, d, (x, y), "taylor")
    reference = dd.curvature(params, d, (x, y), "double_backward")
    full = DirectionalDerivatives(model, classification_loss).curvature(params, d, (x, y), "taylor")
    assert taylor == pytest.approx(reference, rel=0.3)
    assert taylor == pytest.approx(full, rel=0.3)
    assert dd.curvature(params, d, (x, y), "auto") == taylor and dd.path == "taylor"


def _regression_batch(seed: int, n: int = 24):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g, dtype=torch.float64)
    return x, x @ torch.arange(1.0, 6.0, dtype=torch.float64) + torch.randn(n, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("method_cls", [ExactGeN, ParabolaGeN])
def test_gen_line_search_on_another_batch(method_cls):
    """probe="next": slope and curvature come from the probe batch B, not the gradient's
    batch A, so the step is the exact line search of B's (quadratic) loss along -g_A."""
    torch.manual_seed(0)
    model = nn.Linear(5, 1, dtype=torch.float64)
    batch_a, batch_b = _regression_batch(1), _regression_batch(2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    # defer=False: decide at this step (the next one trains on A, not on B)
    options = {"defer": False} if method_cls is ParabolaGeN else {}
    method = method_cls(opt, model, mse_loss, rule="line_search", every=1, smoothing=0.0,
                        probe="next", max_factor=None, **options)
    for _ in range(3):
        params = list(model.parameters())
        g_b = torch.autograd.grad(mse_loss(model, batch_b), params)
        loss = train_step(model, mse_loss, batch_a, opt)
        d = [p.grad.detach().clone() for p in params]  # the step per unit lr
        _, hd = torch.autograd.functional.hvp(
            lambda w, b: mse_loss(lambda x: x @ w.T + b, batch_b), tuple(p.detach() for p in params),
            tuple(d))
        expected = sum(float((a * b).sum()) for a, b in zip(g_b, d)) / sum(
            float((a * b).sum()) for a, b in zip(hd, d))
        assert method.step(batch_a, loss=loss, probe_batch=batch_b) == pytest.approx(expected, rel=1e-6)
        assert method.diagnostics["accepted"] == 1.0


@pytest.mark.parametrize("next_batch", ["probe", "other", "resumed"])
def test_parabola_defers_the_plus_one_probe_to_the_next_training_loss(next_batch):
    """With defer, L(+1) on the probe batch B is the next step's training loss (when that
    step trains on B; probed otherwise): the lr adopted at the start of the next step is the
    exact line search of B's quadratic along the first step, with two forwards per probe."""
    torch.manual_seed(0)
    model = nn.Linear(5, 1, dtype=torch.float64)
    batch_a, batch_b, batch_c = (_regression_batch(seed) for seed in (1, 2, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def make(optimizer):
        return ParabolaGeN(optimizer, model, mse_loss, rule="line_search", every=2,
                           smoothing=0.0, max_factor=None)  # every probe deferrable

    method = make(opt)
    params = list(model.parameters())
    g_b = torch.autograd.grad(mse_loss(model, batch_b), params)
    loss = train_step(model, mse_loss, batch_a, opt)
    d = [p.grad.detach().clone() for p in params]
    _, hd = torch.autograd.functional.hvp(
        lambda w, b: mse_loss(lambda x: x @ w.T + b, batch_b), tuple(p.detach() for p in params),
        tuple(d))
    expected = sum(float((a * b).sum()) for a, b in zip(g_b, d)) / sum(
        float((a * b).sum()) for a, b in zip(hd, d))
    assert method.step(batch_a, loss=loss, probe_batch=batch_b) == 0.01  # not decided yet
    assert method.diagnostics["probed"] == 0.0 and method.passes["forward"] == 2
    if next_batch == "resumed":  # a checkpoint between the probe and its completion
        state = copy.deepcopy((opt.state_dict(), method.state_dict()))
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        method = make(opt)
        opt.load_state_dict(state[0])
        method.load_state_dict(state[1])
    train_on = batch_c if next_batch == "other" else batch_b
    loss = train_step(model, mse_loss, train_on, opt)
    assert method.step(train_on, loss=loss) == pytest.approx(expected, rel=1e-6)
    assert method.diagnostics["probed"] == 1.0 and method.diagnostics["accepted"] == 1.0
    assert method.passes["forward"] == (3 if next_batch == "other" else 2)


def test_gen_probe_next_falls_back_to_the_previous_batch():
    model = nn.Linear(5, 1, dtype=torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    method = ExactGeN(opt, model, mse_loss, every=1, probe="next")
    first, second = _regression_batch(1), _regression_batch(2)
    assert method.probe_source(first) == (first, True)  # nothing else on the very first step
    method.step(first, loss=train_step(model, mse_loss, first, opt))
    batch, same = method.probe_source(second)
    assert batch is first and not same


def test_newt_scales_back_only_past_the_minimum_of_a_descent_direction():
    def run(lr, uphill_momentum=False):
        model = Quadratic()
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        method = Newt(opt, model, quadratic_loss, lookahead_batch=None, lr_min=None, lr_max=None)
        loss = train_step(model, quadratic_loss, None, opt)
        if uphill_momentum:  # momentum from other batches outweighs this batch's gradient
            opt.state[model.theta]["momentum_buffer"] = -10.0 * model.theta.grad.clone()
        method.step(None, loss=loss)
        return method

    line_search = exact_line_search(Quadratic())
    past = run(3.0 * line_search)  # beyond 2x the minimiser: the loss goes up
    assert past.diagnostics["scaled_back"] == 1.0
    assert past.last_lr == pytest.approx(0.1 * 3.0 * line_search)
    short = run(1.5 * line_search)  # past the minimiser but still downhill overall
    assert short.diagnostics["scaled_back"] == 0.0
    uphill = run(0.1 * line_search, uphill_momentum=True)  # the loss goes up, smaller lr no cure
    assert uphill.diagnostics["scaled_back"] == 0.0 and uphill.diagnostics["slope"] < 0


@pytest.mark.parametrize("lr", [1e-4, 1e-2, 10.0])
@pytest.mark.parametrize("method_cls", [ExactGeN, ParabolaGeN])
def test_band_search_starts_from_the_first_probe(method_cls, lr):
    """The band's search acts on the first probe: from any start, above the line search's
    edge (the step raises the loss: the parabola variant through its search down from the
    uphill step) or far below it, the lr lands at ``FIRST_LANDING`` times the exact line
    search, as far as it takes; then the band climbs on its window's evidence, and it ends
    in the band ``[1.8 alpha*, 2 alpha*]``."""
    model = Quadratic()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    method = method_cls(opt, model, quadratic_loss, every=1)
    expected = exact_line_search(model)
    loss = train_step(model, quadratic_loss, None, opt)
    first = method.step(None, loss=loss)
    assert first == pytest.approx(FIRST_LANDING * expected, rel=1e-6)
    if method_cls is ParabolaGeN and lr > 2 * expected:  # phi(1) > phi(0)
        assert 3 <= method.diagnostics["search_points"] <= 3 + ParabolaGeN.SEARCH_STEPS
    for _ in range(150):
        loss = train_step(model, quadratic_loss, None, opt)
        method.step(None, loss=loss)
    assert not method.searching
    alpha = exact_line_search(model)
    assert 1.8 * alpha * (1 - 1e-6) <= method.last_lr <= 2.0 * alpha * (1 + 1e-6) or float(loss) < 1e-10


def test_parabola_search_looks_closer_at_a_concave_first_probe():
    """Along SGD's first step the loss is ``phi(x) = -x + x^2 - x^4`` (``x`` the distance
    moved): convex at the start, concave over a longer stretch (a parabola through ``+-h``
    bends as ``1 - h^2``). From lr 8 the search's first probe, a quarter of the step either
    way (``h = 2``), reads a concave parabola, with no vertex to land on; the closer look
    refits at a quarter of the spread (``h = 1/2``), convex, and the search lands on its
    vertex ``x* = 1/(2 (1 - h^2)) = 2/3`` at the first step, not at a later one from
    parameters that differ by start."""
    model = nn.Module()
    model.w = nn.Parameter(torch.zeros(1, dtype=torch.float64))
    loss_fn = lambda m, batch: (-m.w + m.w**2 - m.w**4).sum()
    optimizer = torch.optim.SGD(model.parameters(), lr=8.0)
    method = ParabolaGeN(optimizer, model, loss_fn)
    loss = loss_fn(model, None)
    loss.backward()
    landed = method.step(None, loss=loss)
    assert method.account["landed"] == 1
    assert landed == pytest.approx(FIRST_LANDING * 2.0 / 3.0, rel=1e-9)


def test_parabola_search_looks_wider_where_a_quarter_step_shows_no_bend():
    """A float32 quadratic ``(w - 1)^2 / 2`` from lr 1e-5: a quarter of the first step bends
    the loss by 1e-11, far inside float32's rounding of 0.5, where the fitted curvature is
    noise (a vertex there would land the lr anywhere); the search widens its points x4 at a
    time until the bend shows, and lands at half the exact line search (1)."""
    model = nn.Module()
    model.w = nn.Parameter(torch.zeros(1))
    loss_fn = lambda m, batch: (0.5 * (m.w - 1.0) ** 2).sum()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-5)
    method = ParabolaGeN(optimizer, model, loss_fn)
    loss = loss_fn(model, None)
    loss.backward()
    landed = method.step(None, loss=loss)
    assert method.account["landed"] == 1
    assert landed == pytest.approx(FIRST_LANDING * 1.0, rel=1e-2)
