"""Baseline schedules: their learning rates at known points of the run."""

from __future__ import annotations

import pytest
import torch

from genlr.methods import build_lr_method


def trace(name: str, steps: int = 10, evals: list[float] | None = None, **options) -> list[float]:
    param = torch.nn.Parameter(torch.ones(2))
    method = build_lr_method(name, torch.optim.SGD([param], lr=0.1), total_steps=steps, **options)
    lrs = [method.last_lr]
    for i in range(steps):
        param.grad = torch.ones(2)
        lrs.append(method.step())
        if evals:
            method.on_eval({"loss": evals[i]})
    return lrs


def test_constant_keeps_the_lr():
    assert trace("constant") == [0.1] * 11


def test_cosine_reaches_half_at_mid_run_and_the_floor_at_the_end():
    lrs = trace("cosine", final_factor=0.1)
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[5] == pytest.approx(0.1 * (0.1 + 0.9 * 0.5))
    assert lrs[10] == pytest.approx(0.01)


def test_warmup_then_decay():
    lrs = trace("warmup_cosine", steps=20, warmup=0.25)  # 5 warm-up steps
    assert lrs[:5] == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1])
    assert lrs[20] == pytest.approx(0.0, abs=1e-12)
    linear = trace("linear", steps=10, final_factor=0.5)
    assert linear[5] == pytest.approx(0.075) and linear[10] == pytest.approx(0.05)


def test_step_drops_at_milestones():
    lrs = trace("step", milestones=[0.5, 0.8], gamma=0.1)
    assert lrs[4] == pytest.approx(0.1) and lrs[5] == pytest.approx(0.01)
    assert lrs[8] == pytest.approx(0.001)


def test_onecycle_peaks_at_max_factor():
    lrs = trace("onecycle", steps=20, max_factor=10.0, pct_start=0.3)
    assert max(lrs) == pytest.approx(1.0, rel=0.02)
    assert lrs[-1] < 0.01


def test_plateau_cuts_after_patience_evals_without_improvement():
    lrs = trace("plateau", steps=6, evals=[1.0, 0.9, 0.9, 0.9, 0.9, 0.9], patience=2, factor=0.5)
    assert lrs[-1] == pytest.approx(0.05)


@pytest.mark.parametrize("name, options, message", [
    ("cosine", {"final_factor": 2.0}, "final_factor must be a fraction"),
    ("step", {"gamma": 0.0}, "gamma must be positive"),
    ("plateau", {"factor": 1.5}, "factor must be in (0, 1)"),
])
def test_bad_options_are_one_line_errors(name, options, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        trace(name, **options)


@pytest.mark.parametrize("name", ["step", "cosine", "linear", "onecycle", "warmup_cosine"])
def test_schedules_need_a_horizon(name):
    """A schedule over the run's progress is refused without the run's length, in one line
    that names it as gen-train does."""
    param = torch.nn.Parameter(torch.ones(1))
    with pytest.raises(ValueError) as refused:
        build_lr_method(name, torch.optim.SGD([param], lr=0.1))
    assert str(refused.value) == f"lr={name} needs the number of training steps (total_steps)"


@pytest.mark.parametrize("name", ["constant", "plateau"])
def test_schedules_not_over_the_run_need_no_horizon(name):
    """The constant lr and the plateau's cuts (on the eval loss) are built and step without
    the run's length."""
    param = torch.nn.Parameter(torch.ones(1))
    method = build_lr_method(name, torch.optim.SGD([param], lr=0.1))
    for _ in range(3):
        param.grad = torch.ones(1)
        assert method.step() == 0.1
    assert param.item() == pytest.approx(1.0 - 3 * 0.1)
