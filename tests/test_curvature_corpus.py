"""ExactGeN's slope and curvature on a corpus of real architectures (``model_zoo``, written
apart from the code it tests, and the registry's models): the Taylor pass against an
independent exact reference, the path it takes, and the fallback chain when a path fails."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

import genlr.curvature.taylor_rules as taylor_rules
from genlr import ExactGeN
from genlr.curvature.directional import DirectionalDerivatives
from genlr.models import build_model
from genlr.tasks import build_task
from model_zoo import NAMES, build

# Where plain double backward can't be the reference, a central difference of gradients in
# float64 is: embedding_bag's backward has no derivative; torch 2.14's double backward
# through torch._weight_norm gives a wrong curvature (the Taylor pass and the difference of
# gradients agree to 1e-10).
NUMERICAL_REFERENCE = {"embedding_bag", "weight_norm_mlp"}
# No single graph of these exists: their jet runs eagerly (``genlr.curvature.taylor``).
DATA_DEPENDENT = {"routed_experts", "trimmed_by_item"}
TOLERANCE = {torch.float64: 1e-6, torch.float32: 1e-3}


def direction(params, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [1e-2 * torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]


def disagreement(x, y):
    return max(abs(a - b) for a, b in zip(x, y)) / max(abs(y[0]), abs(y[1]))


def trainable(case):
    return [p for group in case.param_groups for p in group["params"]]


def reference(dd, name, params, d, batch):
    if name in NUMERICAL_REFERENCE:
        return dd._gradient_difference(params, d, batch)
    return dd.derivatives(params, d, batch, "double_backward")


# The zoo's cases outside NAMES (model_zoo.WITHOUT_TAYLOR_RULE: an op the Taylor pass
# refuses) are checked in test_random_structure.py.
# Tracing an unrolled recurrent network takes seconds: those run with the slow set.
SLOW = {"lstm_lm", "gru_lm"}
ZOO = [pytest.param(name, dtype, marks=[pytest.mark.slow] if name in SLOW
                    or dtype == torch.float32 else [], id=f"{name}-{str(dtype)[6:]}")
       for dtype in (torch.float64, torch.float32) for name in NAMES]


@pytest.mark.compiled
@pytest.mark.parametrize("name,dtype", ZOO)
def test_taylor_pass_matches_the_reference_on_the_zoo(name, dtype, monkeypatch):
    # Compiling an unrolled recurrent network's jet takes a minute a graph on 2 cores: the
    # GRU in float64 proves the compiled pass on one, the other cases run interpreted.
    interpreted = name in SLOW and (name, dtype) != ("gru_lm", torch.float64)
    if interpreted:
        monkeypatch.setenv("GENLR_TAYLOR_COMPILE", "0")
    case = build(name, dtype)
    params = trainable(case)
    d = direction(params)
    dd = DirectionalDerivatives(case.model, case.loss_fn)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        taylor = dd.derivatives(params, d, case.probe_batch)  # "auto", checked on first use
    assert dd.path == "taylor", (dd.path, dd.unavailable)
    assert dd.taylor_mode == ("eager" if name in DATA_DEPENDENT else
                              "interpreted" if interpreted else "compiled")
    assert "taylor" not in dd.unavailable
    assert not [str(w.message) for w in caught if "path taylor" in str(w.message)
                or str(w.message).startswith("Taylor pass:") and name not in DATA_DEPENDENT]
    ref64 = reference(dd, name, params, d, case.probe_batch)
    assert disagreement(taylor, ref64) <= TOLERANCE[dtype]


REGISTRY = [
    ("fashion_mnist", "mlp", {}), ("fashion_mnist", "cnn", {}),
    ("cifar10", "cnn", {"batchnorm": True}),
    pytest.param("cifar10", "resnet18", {}, marks=pytest.mark.slow),  # the zoo has one
    ("fashion_mnist", "vit", {"depth": 1, "dim": 32, "heads": 2}),
    ("fashion_mnist", "vit", {"depth": 1, "dim": 32, "heads": 2, "fused_attention": True}),
]


@pytest.mark.parametrize("task_name,model_name,options", REGISTRY)
def test_taylor_pass_on_the_registry_models(task_name, model_name, options):
    torch.manual_seed(0)
    task = build_task(task_name)
    model = build_model(model_name, task, **options).double()
    batch = (torch.randn(4, *task.input_shape, dtype=torch.float64),
             torch.randint(0, task.num_outputs, (4,)))
    params = list(model.parameters())
    d = direction(params)
    dd = DirectionalDerivatives(model, lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]))
    taylor = dd.derivatives(params, d, batch)
    assert dd.path == "taylor"
    assert disagreement(taylor, dd.derivatives(params, d, batch, "double_backward")) <= 1e-9


class FrozenPlusBias(nn.Module):
    """The repro of a silent error: a frozen layer's output plus a trainable bias, reduced
    over the broadcast dimension."""

    def __init__(self):
        super().__init__()
        self.frozen = nn.Linear(8, 8).requires_grad_(False)
        self.b, self.w = nn.Parameter(torch.randn(8)), nn.Parameter(torch.randn(8))

    def forward(self, x):
        return ((self.frozen(x) + self.b).mean(0) * self.w).pow(2).sum()


class RecurrentCell(nn.Module):
    """One LSTM or GRU step written with CUDA's fused cell op (what ``nn.LSTM``/``nn.GRU`` run
    on CUDA without cuDNN; it has no CPU kernel, but the trace decomposes it before any
    kernel runs) or with PyTorch's own cell (``torch.lstm_cell``/``torch.gru_cell``)."""

    def __init__(self, kind, fused, size=6):
        super().__init__()
        self.kind, self.fused = kind, fused
        self.cell = (nn.LSTMCell if kind == "lstm" else nn.GRUCell)(size, size)
        self.h0 = torch.randn(5, size)

    def forward(self, x):
        c = self.cell
        if not self.fused:
            out = (torch.lstm_cell(x, (self.h0, self.h0), c.weight_ih, c.weight_hh, c.bias_ih, c.bias_hh)
                   if self.kind == "lstm" else
                   torch.gru_cell(x, self.h0, c.weight_ih, c.weight_hh, c.bias_ih, c.bias_hh))
        else:
            fused = (torch.ops.aten._thnn_fused_lstm_cell if self.kind == "lstm"
                     else torch.ops.aten._thnn_fused_gru_cell)
            out = fused(x @ c.weight_ih.T, self.h0 @ c.weight_hh.T, self.h0, c.bias_ih, c.bias_hh)
        hy = out[0] if isinstance(out, tuple) else out  # torch.gru_cell returns hy alone
        return (hy.tanh() * (out[1] if self.kind == "lstm" else hy)).sum()


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_cuda_fused_recurrent_cells_decompose_to_the_cells_equations(kind):
    torch.manual_seed(0)
    fused = RecurrentCell(kind, fused=True).double()
    plain = RecurrentCell(kind, fused=False).double()
    plain.load_state_dict(fused.state_dict())
    plain.h0 = fused.h0 = fused.h0.double()
    x = torch.randn(5, 6, dtype=torch.float64)
    d = direction(list(fused.parameters()))
    got = DirectionalDerivatives(fused, lambda m, b: m(b)).derivatives(
        list(fused.parameters()), d, x, "taylor")
    want = DirectionalDerivatives(plain, lambda m, b: m(b)).derivatives(
        list(plain.parameters()), d, x, "double_backward")
    assert got == pytest.approx(want, rel=1e-10)


def test_frozen_output_plus_broadcast_bias_repro():
    torch.manual_seed(0)
    model = FrozenPlusBias().double()
    x = torch.randn(16, 8, dtype=torch.float64)
    params = [model.b, model.w]
    d = direction(params)
    dd = DirectionalDerivatives(model, lambda m, b: m(b))
    got = dd.derivatives(params, d, x)
    assert dd.path == "taylor"
    assert got == pytest.approx(dd.derivatives(params, d, x, "double_backward"), rel=1e-12)


# ------------------------------------------------------------ the fallback chain
def zoo_mlp():
    case = build("mse_regression", torch.float64)
    params = trainable(case)
    return case, params, direction(params)


def test_a_rule_that_raises_hands_over_to_double_backward(monkeypatch):
    case, params, d = zoo_mlp()

    def broken(*args):
        raise IndexError("boom")

    monkeypatch.setitem(taylor_rules.RULES, torch.ops.aten.addmm.default, broken)
    dd = DirectionalDerivatives(case.model, case.loss_fn)
    with pytest.warns(RuntimeWarning, match="path taylor can't be used.*addmm.*IndexError"):
        got = dd.derivatives(params, d, case.probe_batch)
    assert dd.path == "double_backward" and "taylor" in dd.unavailable
    assert got == pytest.approx(dd.derivatives(params, d, case.probe_batch, "double_backward"))
    dd.derivatives(params, d, case.probe_batch)  # not tried again, no second warning
    assert dd.counts == {"double_backward": 2}


def test_a_rule_that_is_wrong_is_caught_by_the_check(monkeypatch):
    case, params, d = zoo_mlp()
    right = taylor_rules.RULES[torch.ops.aten.addmm.default]

    def wrong(op, args, kwargs):
        jet = right(op, args, kwargs)
        return taylor_rules.Jet(jet.v, jet.t, None if jet.a is None else 1.1 * jet.a)

    monkeypatch.setitem(taylor_rules.RULES, torch.ops.aten.addmm.default, wrong)
    dd = DirectionalDerivatives(case.model, case.loss_fn)
    with pytest.warns(RuntimeWarning, match="disagrees with double_backward"):
        got = dd.derivatives(params, d, case.probe_batch)
    assert dd.path == "double_backward"
    assert got == pytest.approx(dd.derivatives(params, d, case.probe_batch, "double_backward"))


def test_check_every_checks_again(monkeypatch):
    case, params, d = zoo_mlp()
    dd = DirectionalDerivatives(case.model, case.loss_fn, check_every=2)
    calls = []
    original = dd._check
    monkeypatch.setattr(dd, "_check", lambda *a: (calls.append(1), original(*a)))
    for _ in range(5):
        dd.derivatives(params, d, case.probe_batch)
    assert len(calls) == 3  # first use, then every second: uses 1, 2, 4 (counted before each)


def test_the_check_runs_without_tf32_and_leaves_the_users_switches_alone():
    """Users switch TF32 on for training (nanoGPT does, with the legacy switches); the check
    compares in full float32 and puts every switch back as it was."""
    from genlr.curvature.directional import full_float32

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        with full_float32():
            assert torch.backends.cuda.matmul.fp32_precision == "ieee"
            assert torch.backends.cudnn.conv.fp32_precision == "ieee"
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_no_path_left_keeps_the_lr_and_the_state_consistent(monkeypatch):
    case = build("mse_regression", torch.float32)
    opt = torch.optim.AdamW(case.param_groups, lr=1e-3)
    method = ExactGeN(opt, case.model, case.loss_fn, every=1)

    def fail(*args, **kwargs):
        raise RuntimeError("no way")

    for path in ("_taylor", "_double_backward", "_forward_over_reverse"):
        monkeypatch.setattr(method.derivatives, path, fail)
    lrs = method.lrs
    for step in range(3):
        opt.zero_grad()
        loss = case.loss_fn(case.model, case.batch)
        loss.backward()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            method.step(case.batch, loss=loss, probe_batch=case.probe_batch)
        assert method.step_count == step + 1 == method.updates
        assert method.lrs == lrs
        assert method.diagnostics["fallback"] == 1.0 and method.diagnostics.get("curvature_path_none") == 1.0
    assert method.summary_fields()["curvature_paths"] == {"none": 3}
    state = next(iter(opt.state.values()))
    assert int(state["step"]) == 3


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=[] if name in ("gpt", "frozen_backbone_head", "compiled_mlp")
                 else [pytest.mark.slow]) for name in NAMES])
def test_exact_gen_steps_on_every_zoo_model_and_reports_its_path(name, monkeypatch):
    if name in SLOW:  # as above
        monkeypatch.setenv("GENLR_TAYLOR_COMPILE", "0")
    case = build(name, torch.float32)
    opt = torch.optim.AdamW(case.param_groups, lr=1e-3)
    method = ExactGeN(opt, case.model, case.loss_fn, every=1)
    for batch, probe in ((case.batch, case.probe_batch), (case.probe_batch, case.batch)):
        opt.zero_grad()
        loss = case.loss_fn(case.model, batch)
        loss.backward()
        method.step(batch, loss=loss, probe_batch=probe)
    assert method.diagnostics.get("curvature_path_taylor") == 1.0, (name, method.derivatives.unavailable)
    assert math.isfinite(method.last_lr) and method.last_lr > 0
    assert method.summary_fields()["curvature_paths"] == {"taylor": 2}


# ------------------------------------------------------------------------ the probes
class DropoutLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(4, 8, num_layers=2, dropout=0.5, batch_first=True)

    def forward(self, x):
        return self.lstm(x)[0].pow(2).mean()


# Models whose training forward drops something, and no BatchNorm: eval() computes the
# probes' function (it switches their dropout or stochastic depth off, and nothing else).
EVAL_IS_THE_PROBE = ("gpt_dropout", "transformer_encoder_dropout", "lstm", "vit_drop_path",
                     "resnet_stochastic_depth")


@pytest.mark.parametrize("name", ["gpt_dropout", "transformer_encoder_dropout", "vit",
                                  "explicit_dropout", "batchnorm_mlp_dropout", "lstm",
                                  "vit_drop_path", "resnet_stochastic_depth"])
def test_probes_switch_off_every_dropout_and_touch_nothing(name):
    """Dropout off whatever switched it on (modules, SDPA's dropout_p, attention layers,
    recurrent layers, F.dropout(training=True) in the model's code), stochastic depth's
    per-sample masks (timm's DropPath, torchvision's stochastic_depth) at their mean, the
    identity; BatchNorm normalises with the batch statistics and writes no buffer; the RNG
    is untouched."""
    if name == "lstm":
        torch.manual_seed(0)
        model, loss_fn, batch = DropoutLSTM().double(), (lambda m, b: m(b)), \
            torch.randn(3, 5, 4, dtype=torch.float64)
    else:
        case = build(name, torch.float64)
        model, loss_fn, batch = case.model, case.loss_fn, case.batch
    method = ExactGeN(torch.optim.SGD(model.parameters(), lr=0.1), model, loss_fn)
    buffers = [b.clone() for b in model.buffers()]
    rng = torch.get_rng_state()
    first, second = method.probe_loss(batch), method.probe_loss(batch)
    assert first == second
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers()))
    assert model.training
    if name in EVAL_IS_THE_PROBE:
        model.eval()
        with torch.no_grad():
            assert first == pytest.approx(float(loss_fn(model, batch)), rel=1e-12)
    model.train()
    assert method.applies_dropout() == (name != "vit")
