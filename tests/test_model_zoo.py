"""The model zoo itself: every case builds, trains the parameters it says, and is reproducible."""

from __future__ import annotations

import copy

import pytest
import torch

from model_zoo import NAMES, build


def leaves(batch) -> list[torch.Tensor]:
    if isinstance(batch, torch.Tensor):
        return [batch]
    return [t for v in (batch.values() if isinstance(batch, dict) else batch) for t in leaves(v)]


def tensors(case) -> list[torch.Tensor]:
    """Everything a case is made of: its model's state (parameters and buffers) and both batches."""
    return list(case.model.state_dict().values()) + leaves(case.batch) + leaves(case.probe_batch)


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(x.dtype == y.dtype and torch.equal(x, y) for x, y in zip(a, b))


def test_names_are_the_cases():
    assert len(NAMES) == len(set(NAMES)) >= 25
    with pytest.raises(KeyError, match="unknown case 'alexnet'; known: gpt, "):
        build("alexnet")


@pytest.mark.parametrize("name", NAMES)
def test_case_builds_in_train_mode_in_its_dtype_with_finite_loss(name):
    single = build(name)
    double = build(name, torch.float64)
    assert single.name == name and single.covers and "\n" not in single.covers
    # float64 is the float32 case upcast: the same problem at the same point
    assert same([t.double() if t.is_floating_point() else t for t in tensors(single)], tensors(double))
    for case, dtype in ((single, torch.float32), (double, torch.float64)):
        assert all(m.training for m in case.model.modules())
        for t in tensors(case):
            assert t.dtype in (dtype, torch.int64, torch.bool), (t.dtype, t.shape)
        for batch in (case.batch, case.probe_batch):
            loss = case.loss_fn(case.model, batch)
            assert loss.shape == () and loss.dtype == dtype and torch.isfinite(loss)


@pytest.mark.parametrize("name", NAMES)
def test_backward_reaches_exactly_the_grouped_parameters(name):
    case = build(name)
    grouped = [p for group in case.param_groups for p in group["params"]]
    assert all("lr" in group and group["params"] for group in case.param_groups)
    assert len({id(p) for p in grouped}) == len(grouped)
    assert {id(p) for p in grouped} == {id(p) for p in case.model.parameters() if p.requires_grad}
    case.loss_fn(case.model, case.batch).backward()
    for p in case.model.parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
        else:
            assert p.grad is None


@pytest.mark.parametrize("name", ["frozen_backbone_head", "frozen_output_broadcast_bias",
                                  "frozen_feature_map_channel_bias", "distillation_kl"])
def test_frozen_cases_have_frozen_parameters(name):
    assert any(not p.requires_grad for p in build(name).model.parameters())


def test_group_case_has_two_learning_rates():
    groups = build("frozen_backbone_head").param_groups
    assert len(groups) == 2 and groups[0]["lr"] != groups[1]["lr"]


@pytest.mark.parametrize("name", NAMES)
def test_build_depends_on_the_seed_alone(name):
    torch.manual_seed(123)
    outside = torch.get_rng_state()
    a = build(name, seed=0)
    assert torch.equal(torch.get_rng_state(), outside)  # the caller's random stream is untouched
    torch.manual_seed(456)
    b, c = build(name, seed=0), build(name, seed=1)
    assert same(tensors(a), tensors(b))
    assert not same(tensors(a), tensors(c))
    assert not same(list(a.model.parameters()), list(c.model.parameters()))
    probe = leaves(a.probe_batch)
    assert [(t.shape, t.dtype) for t in leaves(a.batch)] == [(t.shape, t.dtype) for t in probe]
    assert not same(leaves(a.batch), probe)
    assert not same(leaves(a.batch), leaves(c.batch))


@pytest.mark.parametrize("name", NAMES)
def test_loss_fn_uses_the_model_it_is_given(name):
    case = build(name, torch.float64)
    twin = copy.deepcopy(case.model)
    with torch.random.fork_rng(devices=[]):  # the same dropout masks for both
        torch.manual_seed(0)
        expected = case.loss_fn(case.model, case.batch).detach()
        torch.manual_seed(0)
        loss = case.loss_fn(twin, case.batch)
    assert torch.equal(loss, expected)
    loss.backward()
    assert all(p.grad is None for p in case.model.parameters())
    assert all(p.grad is not None for p in twin.parameters() if p.requires_grad)
