"""GPU runs (``pytest -m gpu``; skipped without CUDA): every LR method under bf16 autocast
and under fp16 with a GradScaler, on the CNN, a few steps each; the Taylor pass on the zoo
(compiled for CUDA), under bf16 autocast, eagerly for a routed mixture of experts, and
through ``_grouped_mm`` in bf16."""

from __future__ import annotations

import math

import pytest
import torch
import torch.utils._pytree as pytree

from genlr.engine import RunSpec, TrainerConfig, train
from genlr.methods import METHODS
from genlr.curvature.directional import DirectionalDerivatives
from model_zoo import NAMES as ZOO_NAMES
from model_zoo import build
from test_curvature_corpus import direction, disagreement, reference

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
@pytest.mark.parametrize("lr", sorted(METHODS))
def test_every_method_trains_under_amp_on_cuda(lr, amp, tmp_path, fake_mnist):
    optimizer = {"name": "sgd", "lr": 0.05} if lr in ("polyak",) else {"name": "adamw"}
    spec = RunSpec(task={"name": "mnist", "data_root": str(fake_mnist[0]), "download": False},
                   model={"name": "cnn", "batchnorm": True}, optimizer=optimizer, lr={"name": lr},
                   trainer=TrainerConfig(device="cuda", amp=amp, max_steps=6, batch_size=16,
                                         progress=False, plots=False))
    summary = train(spec, tmp_path)
    assert summary["status"] == "completed", summary["message"]
    assert summary["device"].startswith("cuda") and summary["amp"] == amp
    assert math.isfinite(summary["final"]["train_loss"])
    assert summary["lr"]["final"] is not None and summary["lr"]["final"] >= 0  # schedules end at 0


def test_peak_memory_is_per_run_on_cuda(tmp_path, fake_mnist):
    spec = RunSpec(task={"name": "mnist", "data_root": str(fake_mnist[0]), "download": False},
                   trainer=TrainerConfig(device="cuda", max_steps=2, batch_size=16,
                                         progress=False, plots=False))
    assert train(spec, tmp_path / "a")["peak_memory_mb"] > 0


# Compiled for CUDA (Triton) in this check; the other cases' jets run interpreted on CUDA,
# so that the whole GPU check fits its time (each compile takes seconds).
COMPILED_ON_CUDA = {"gpt", "vit", "resnet18", "conv_variants", "label_smoothing_class_weights"}


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_taylor_pass_on_cuda_matches_the_cpu_reference(name):
    """The Taylor pass on CUDA against the CPU corpus test's float64 reference (double backward,
    or a difference of gradients): on an H200 the references taken on CUDA itself disagreed
    with each other by 6e-3 on weight norm's fused kernel."""
    case = build(name, torch.float64)
    params = [p for group in case.param_groups for p in group["params"]]
    d = direction(params)
    want = reference(DirectionalDerivatives(case.model, case.loss_fn), name, params, d, case.probe_batch)
    case.model.to("cuda")
    batch = pytree.tree_map(lambda x: x.cuda() if isinstance(x, torch.Tensor) else x, case.probe_batch)
    dd = DirectionalDerivatives(case.model, case.loss_fn)
    dd._taylor_pass.compile = name in COMPILED_ON_CUDA
    got = dd.derivatives(params, [v.cuda() for v in d], batch, "taylor")
    expected = "eager" if dd._taylor_pass.uncaptured else \
        "compiled" if name in COMPILED_ON_CUDA else "interpreted"
    assert dd.taylor_mode == expected
    assert disagreement(got, want) <= 1e-6


def _zoo_on_cuda(name, dtype):
    case = build(name, dtype)
    case.model.to("cuda")
    params = [p for group in case.param_groups for p in group["params"]]
    move = lambda b: pytree.tree_map(lambda x: x.cuda() if isinstance(x, torch.Tensor) else x, b)  # noqa: E731
    return case, params, [v.cuda() for v in direction(params)], move(case.probe_batch)


def test_the_compiled_pass_on_cuda_under_bf16_autocast():
    """The jet compiled for CUDA runs its products in bf16 under autocast, the check passes
    within that precision, and the result is the float32 one within it."""
    import warnings

    case, params, d, batch = _zoo_on_cuda("gpt", torch.float32)
    dd = DirectionalDerivatives(case.model, case.loss_fn,
                                lambda: torch.autocast("cuda", dtype=torch.bfloat16))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        low = dd.derivatives(params, d, batch)
    assert dd.path == "taylor" and dd.taylor_mode == "compiled" and dd.taylor_autocast
    full = DirectionalDerivatives(case.model, case.loss_fn).derivatives(params, d, batch, "taylor")
    assert disagreement(low, full) < 0.125


def test_data_dependent_models_take_the_eager_jet_on_cuda():
    case, params, d, batch = _zoo_on_cuda("routed_experts", torch.float64)
    dd = DirectionalDerivatives(case.model, case.loss_fn)
    with pytest.warns(RuntimeWarning, match="can't be captured"):
        got = dd.derivatives(params, d, batch)
    assert dd.path == "taylor" and dd.taylor_mode == "eager"
    assert disagreement(got, dd.derivatives(params, d, batch, "double_backward")) <= 1e-6


def test_grouped_mm_experts_in_bf16_on_cuda_are_compiled():
    """Mixtral's grouped experts: ``aten._grouped_mm`` has no forward-mode derivative and no
    double backward; on CUDA in bf16 the loss is captured and the rule compiled."""
    from test_taylor_pass import GroupedExperts

    torch.manual_seed(0)
    model = GroupedExperts(width=16, hidden=32).cuda().to(torch.bfloat16)
    reference = GroupedExperts(width=16, hidden=32, grouped=False).cuda().double()
    reference.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    x = torch.randn(64, 16, device="cuda").to(torch.bfloat16)
    params = list(model.parameters())
    d = [v.cuda().to(torch.bfloat16) for v in direction([p.float().cpu() for p in params])]
    loss_fn = lambda m, b: m(b)  # noqa: E731
    dd = DirectionalDerivatives(model, loss_fn)
    got = dd.derivatives(params, d, x, "taylor")
    assert dd.taylor_mode == "compiled"
    want = DirectionalDerivatives(reference, loss_fn).derivatives(
        list(reference.parameters()), [v.double() for v in d], x.double(), "double_backward")
    assert disagreement(got, want) < 0.1  # bf16 parameters and products


def test_the_compiled_pass_under_tf32_passes_its_check():
    """Users switch TF32 on for training: the check compares the compiled pass with the
    interpreted one in the precision it ran in, so TF32 rounding is no disagreement."""
    import warnings

    case, params, d, batch = _zoo_on_cuda("gpt", torch.float32)
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        dd = DirectionalDerivatives(case.model, case.loss_fn)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            dd.derivatives(params, d, batch)
        assert dd.path == "taylor" and dd.taylor_mode == "compiled"
        assert dd._taylor_pass.compile
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
