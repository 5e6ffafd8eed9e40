"""ExactGeN's probes on models whose training forward is random or holds an op of the user's
own, against references written here from the architectures' definitions:

* stochastic depth (Huang et al., ECCV 2016; the zoo's ``vit_drop_path``, timm's DropPath,
  and ``resnet_stochastic_depth``, ``torchvision.ops.stochastic_depth``): the probes measure
  the loss evaluation computes, its branches never dropped (the expectation of a branch
  scaled by 1/keep), so the slope and curvature are those of the same model with its drop
  probabilities set to 0, by plain float64 double backward;
* a custom op without a forward-mode derivative (the zoo's ``grouped_mm_custom_op``, shaped
  as transformers' grouped_mm fallback, whose jvp is a zero tangent without an error): the
  Taylor pass refuses it by name, and ``curvature="auto"`` gets the right curvature by
  double backward;
* other random draws in the forward (Gaussian noise on the inputs): the probes say so once.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import genlr.curvature.probe as probe_mode_module
import genlr.curvature.taylor as taylor
from genlr import ExactGeN
from genlr.curvature.directional import DirectionalDerivatives
from genlr.curvature.taylor import TaylorUnsupported
from model_zoo import LR, NAMES, WITHOUT_TAYLOR_RULE, build

STOCHASTIC_DEPTH = ["vit_drop_path", "resnet_stochastic_depth"]
CUSTOM_OP = "grouped_mm_custom_op"


def direction(params, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [1e-2 * torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]


def trainable(case):
    return [p for group in case.param_groups for p in group["params"]]


def double_backward(model, loss_fn, batch, d):
    """``(<g, d>, d^T H d)`` of ``loss_fn(model, batch)`` at the model's parameters (in
    ``model.parameters()`` order, as ``d``), by reverse over reverse, in the model's dtype."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss_fn(model, batch), params, create_graph=True)
    slope = sum((g * v).sum() for g, v in zip(grads, d))
    hd = torch.autograd.grad(slope, params)
    return float(slope.detach()), float(sum((h * v).sum() for h, v in zip(hd, d)))


def never_dropped(model):
    """A copy of ``model`` with every stochastic-depth drop probability set to 0: the
    function evaluation computes, still in training mode."""
    twin = copy.deepcopy(model)
    switched = [m for m in twin.modules() if hasattr(m, "drop_prob")]
    assert switched and all(m.drop_prob > 0 for m in switched)
    for m in switched:
        m.drop_prob = 0.0
    return twin


def training_losses(case, seeds=(1, 2)):
    """The training loss on ``case.batch`` with the global RNG seeded by each of ``seeds``."""
    losses = []
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        for seed in seeds:
            torch.manual_seed(seed)
            losses.append(float(case.loss_fn(case.model, case.batch)))
    return losses


def test_the_new_cases_are_where_they_belong():
    """The stochastic-depth cases are in the corpus the Taylor pass must handle; the custom
    op's is not (the Taylor pass refuses it: tests that expect the Taylor path leave it out)."""
    assert set(STOCHASTIC_DEPTH) <= set(NAMES)
    assert CUSTOM_OP in WITHOUT_TAYLOR_RULE and CUSTOM_OP not in NAMES


# ------------------------------------------------------------------ stochastic depth
@pytest.mark.parametrize("mode", ["taylor", "auto"])
@pytest.mark.parametrize("name", STOCHASTIC_DEPTH)
def test_stochastic_depth_is_measured_as_evaluation_computes_it(name, mode):
    """Slope and curvature equal the never-dropped model's by float64 double backward; the
    global RNG is where it was, and the training forward still drops branches (its loss
    follows the seed) before and after the probe."""
    case = build(name, torch.float64)
    params = trainable(case)
    d = direction(params)
    noisy = training_losses(case)
    assert noisy[0] != noisy[1]  # stochastic depth is on: the masks follow the seed
    want = double_backward(never_dropped(case.model), case.loss_fn, case.probe_batch, d)

    dd = DirectionalDerivatives(case.model, case.loss_fn)
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = dd.derivatives(params, d, case.probe_batch, mode)
    assert torch.equal(torch.get_rng_state(), rng)
    assert dd.path == "taylor", dd.unavailable
    # a Bernoulli mask is no random draw to warn about, and the Taylor pass passed its check
    assert not [str(w.message) for w in caught
                if "draws random numbers" in str(w.message) or "curvature path" in str(w.message)]
    assert got[0] == pytest.approx(want[0], rel=1e-6)
    assert got[1] == pytest.approx(want[1], rel=1e-6)
    assert training_losses(case) == noisy  # the probe left the model's stochastic depth alone


@pytest.mark.parametrize("name", STOCHASTIC_DEPTH)
def test_exact_gen_step_measures_stochastic_depth_off(name):
    """The same through one ``ExactGeN.step`` with a probe batch: its slope and curvature
    are the never-dropped model's along the step SGD took."""
    case = build(name, torch.float64)
    reference = never_dropped(case.model)  # the parameters before the step
    opt = torch.optim.SGD(case.param_groups)
    method = ExactGeN(opt, case.model, case.loss_fn, every=1, curvature="taylor")
    torch.manual_seed(0)
    loss = case.loss_fn(case.model, case.batch)  # a training forward: branches dropped
    loss.backward()
    d = [LR * p.grad.clone() for p in trainable(case)]  # plain SGD's step
    rng = torch.get_rng_state()
    method.step(case.batch, loss=loss, probe_batch=case.probe_batch)
    assert torch.equal(torch.get_rng_state(), rng)
    slope, curvature = double_backward(reference, case.loss_fn, case.probe_batch, d)
    assert method.diagnostics["curvature_path_taylor"] == 1.0
    assert method.diagnostics["slope"] == pytest.approx(slope, rel=1e-6)
    assert method.diagnostics["curvature"] == pytest.approx(curvature, rel=1e-6)


# ------------------------------------------------------------------ a custom op
def custom_op_case():
    case = build(CUSTOM_OP, torch.float64)
    params = trainable(case)
    return case, params, direction(params)


@pytest.mark.parametrize("jet", ["captured", "eager"])
def test_custom_op_the_taylor_pass_refuses_by_name(jet):
    """Chosen alone, the Taylor path raises naming the op, rather than giving the custom
    op a zero tangent, whether its jet runs on the captured graph or eagerly (as for a loss
    that reads tensor values); through ``ExactGeN(curvature="taylor")`` the error reaches
    the caller of ``step``."""
    case, params, d = custom_op_case()
    dd = DirectionalDerivatives(case.model, case.loss_fn)
    if jet == "eager":
        dd._taylor_pass.uncaptured = "as if the loss read a tensor's value"
    with pytest.raises(TaylorUnsupported, match=r"model_zoo\.grouped_mm.*custom op"):
        dd.derivatives(params, d, case.probe_batch, "taylor")
    if jet == "captured":
        method = ExactGeN(torch.optim.SGD(case.param_groups), case.model, case.loss_fn,
                          every=1, curvature="taylor")
        case.loss_fn(case.model, case.batch).backward()
        with pytest.raises(TaylorUnsupported, match=r"model_zoo\.grouped_mm"):
            method.step(case.batch, probe_batch=case.probe_batch)


def test_custom_op_auto_takes_double_backward_and_is_exact():
    """``curvature="auto"``: the Taylor path is given up for the op it has no rule for (not
    for a disagreement its check happened to find), one warning says so, and double backward
    gives the float64 reference's slope and curvature."""
    case, params, d = custom_op_case()
    want = double_backward(case.model, case.loss_fn, case.probe_batch, d)
    dd = DirectionalDerivatives(case.model, case.loss_fn)
    with pytest.warns(RuntimeWarning, match=r"path taylor can't be used.*model_zoo\.grouped_mm"):
        got = dd.derivatives(params, d, case.probe_batch)
    assert dd.path == "double_backward"
    assert "custom op without a Taylor rule" in dd.unavailable["taylor"]
    assert got[0] == pytest.approx(want[0], rel=1e-6)
    assert got[1] == pytest.approx(want[1], rel=1e-6)


def test_custom_op_exact_gen_reports_its_path():
    """Two ``ExactGeN`` steps: the curvature is double backward's both times (the Taylor
    pass is not tried again), and the first equals the reference along SGD's step."""
    case, _, _ = custom_op_case()
    reference = copy.deepcopy(case.model)
    opt = torch.optim.SGD(case.param_groups)
    method = ExactGeN(opt, case.model, case.loss_fn, every=1)
    for step, (batch, probe) in enumerate([(case.batch, case.probe_batch),
                                           (case.probe_batch, case.batch)]):
        opt.zero_grad()
        loss = case.loss_fn(case.model, batch)
        loss.backward()
        d = [LR * p.grad.clone() for p in trainable(case)]  # plain SGD's step
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the hand-over, said once
            method.step(batch, loss=loss, probe_batch=probe)
        assert method.diagnostics["curvature_path_double_backward"] == 1.0
        assert "curvature_path_taylor" not in method.diagnostics
        if step == 0:
            slope, curvature = double_backward(reference, case.loss_fn, probe, d)
            assert method.diagnostics["slope"] == pytest.approx(slope, rel=1e-6)
            assert method.diagnostics["curvature"] == pytest.approx(curvature, rel=1e-6)
    summary = method.summary_fields()
    assert summary["curvature_paths"] == {"double_backward": 2}
    assert "custom op" in summary["curvature_unavailable"]["taylor"]


def test_a_trusted_custom_op_would_be_silently_wrong(monkeypatch):
    """Why the refusal matters: trusted like an ATen op, the custom op's forward-mode
    derivative is a zero tangent and the Taylor path, chosen alone, returns a wrong slope and
    curvature without an error (what the refusal above turns into one)."""
    monkeypatch.setattr(taylor, "TRUSTED_NAMESPACES", (*taylor.TRUSTED_NAMESPACES, "model_zoo"))
    case, params, d = custom_op_case()
    want = double_backward(case.model, case.loss_fn, case.probe_batch, d)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the eager jet's notice
        got = DirectionalDerivatives(case.model, case.loss_fn).derivatives(
            params, d, case.probe_batch, "taylor")
    assert got[0] != pytest.approx(want[0], rel=0.1) and got[1] != pytest.approx(want[1], rel=0.1)


def test_custom_op_case_trains_every_parameter():
    """The checks ``test_model_zoo`` runs on ``NAMES``, for the case outside them."""
    case = build(CUSTOM_OP)
    assert all(m.training for m in case.model.modules())
    loss = case.loss_fn(case.model, case.batch)
    assert loss.shape == () and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in case.model.parameters())
    twin = build(CUSTOM_OP, torch.float64)
    assert torch.equal(twin.model.expert_of, case.model.expert_of)
    with torch.no_grad():  # float64 is the float32 case upcast
        assert float(twin.loss_fn(twin.model, twin.batch)) == pytest.approx(float(loss), rel=1e-5)


# ------------------------------------------------------------------ other random draws
class NoisyInputs(nn.Module):
    """An MLP with noise added to its inputs in training (a regulariser): a draw with no mean
    the probes can take in its place. ``draw``: ``torch.randn_like`` or another."""

    def __init__(self, draw=torch.randn_like):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
        self.draw = draw

    def forward(self, x):
        if self.training:
            x = x + 0.1 * self.draw(x)
        return self.net(x)


def noisy_method(draw=torch.randn_like):
    torch.manual_seed(0)
    model = NoisyInputs(draw).double()
    loss_fn = lambda m, b: nn.functional.mse_loss(m(b[0]), b[1])  # noqa: E731
    batch = (torch.randn(8, 6, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64))
    return ExactGeN(torch.optim.SGD(model.parameters(), lr=0.1), model, loss_fn), batch


def test_probes_warn_once_about_random_draws_in_the_forward(monkeypatch):
    """One warning naming the draw, whatever the number of probes and paths that meet it;
    a new kind of draw is said once too; the global RNG is untouched."""
    monkeypatch.setattr(probe_mode_module, "_WARNED_DRAWS", set())  # "once" is per process: start afresh
    method, batch = noisy_method()
    params = list(method.model.parameters())
    rng = torch.get_rng_state()
    with pytest.warns(UserWarning, match="draws random numbers") as caught:
        method.probe_loss(batch)
        method.probe_loss(batch)
        method.derivatives.derivatives(params, direction(params), batch)  # "auto": 4 paths run
    assert torch.equal(torch.get_rng_state(), rng)
    said = [str(w.message) for w in caught if "draws random numbers" in str(w.message)]
    assert len(said) == 1 and "(torch.randn_like)" in said[0], said

    other, batch = noisy_method(torch.rand_like)
    with pytest.warns(UserWarning, match=r"draws random numbers in its forward \(torch\.rand_like\)"):
        other.probe_loss(batch)
    again, batch = noisy_method()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        again.probe_loss(batch)  # randn_like was said already
