"""Models: built from the task's shapes, refused with one line where they cannot fit."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, jvp

from genlr.models import MODELS, IncompatibleModelError, build_model
from genlr.options import check_options, options_of
from genlr.tasks import build_task
from genlr.tasks.base import Task


class Shaped(Task):
    """A data-less task with a given input shape, for building models without data."""

    def __init__(self, shape, outputs=10):
        self.name, self.input_shape, self.num_outputs = f"shape{shape}", tuple(shape), outputs

    loss = evaluate = train_batches = eval_batches = steps_per_epoch = None


GREY, COLOUR, VECTOR = Shaped((1, 28, 28)), Shaped((3, 32, 32)), Shaped((20,), outputs=3)


def test_registry_and_options():
    """A name the registry does not hold is refused naming every one it does; each builder's
    options (keyword-only, each with a default its own declaration allows) are the ones
    build_model takes: one the builder does not have is refused naming them."""
    assert set(MODELS) >= {"mlp", "linear", "cnn", "resnet18", "vit", "coords"}
    with pytest.raises(ValueError) as refused:
        build_model("alexnet", GREY)
    assert str(refused.value) == f"model='alexnet': choose one of: {', '.join(MODELS)}"
    for name, builder in MODELS.items():
        options = options_of(builder)  # raises for an option without a default
        check_options("model", name, options, {o.name: o.default for o in options})
        names = ", ".join(o.name for o in options)
        with pytest.raises(ValueError) as refused:
            build_model(name, GREY, bogus=1)
        assert str(refused.value) == (f"model.bogus: model={name} has no such key; "
                                      + (f"choose one of: {names}" if names else "it has none"))


@pytest.mark.parametrize("name", ["mlp", "linear", "cnn", "vit"])
@pytest.mark.parametrize("task", [GREY, COLOUR], ids=["28x28x1", "32x32x3"])
def test_image_models_forward(name, task):
    model = build_model(name, task, **({"depth": 2} if name == "vit" else {}))
    out = model(torch.randn(3, *task.input_shape))
    assert out.shape == (3, 10)


def test_resnet18_small_image_stem_and_one_step():
    model = build_model("resnet18", GREY)
    assert model.conv1.in_channels == 1 and model.conv1.kernel_size == (3, 3)
    assert model.conv1.stride == (1, 1) and isinstance(model.maxpool, nn.Identity)
    assert model.fc.out_features == 10
    model(torch.randn(2, 1, 28, 28)).sum().backward()
    assert model.conv1.weight.grad is not None
    with torch.device("meta"):
        assert build_model("resnet18", COLOUR).conv1.in_channels == 3


def test_vector_models_forward():
    for name in ("mlp", "linear"):
        assert build_model(name, VECTOR)(torch.randn(5, 20)).shape == (5, 3)


def test_mlp_options():
    model = build_model("mlp", VECTOR, hidden=[8, 4], activation="tanh", dropout=0.1)
    widths = [m.out_features for m in model if isinstance(m, nn.Linear)]
    assert widths == [8, 4, 3]
    assert sum(isinstance(m, nn.Tanh) for m in model) == 2
    assert sum(isinstance(m, nn.Dropout) for m in model) == 2
    assert [m.out_features for m in build_model("mlp", VECTOR, hidden=[]) if isinstance(m, nn.Linear)] == [3]
    with pytest.raises(ValueError, match="model.activation='swish2': choose one of: relu, gelu, "):
        build_model("mlp", VECTOR, activation="swish2")


def test_cnn_matches_the_pytorch_example():
    model = build_model("cnn", GREY)
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [c.out_channels for c in convs] == [32, 64]
    assert linears[0].in_features == 9216 and linears[0].out_features == 128  # as in the example
    assert [d.p for d in model if isinstance(d, nn.Dropout)] == [0.25, 0.5]
    with_bn = build_model("cnn", COLOUR, batchnorm=True)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in with_bn) == 2
    assert with_bn(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_vit_supports_exact_second_order():
    """Exact GeN needs forward-mode AD or double backward through the model; the default
    (written-out) attention allows both, and agrees with the fused kernel."""
    torch.manual_seed(0)
    model = build_model("vit", GREY, depth=1, dim=32, heads=2).eval()
    x = torch.randn(2, 1, 28, 28)
    params = {k: v.detach() for k, v in model.named_parameters()}
    tangent = {k: torch.randn_like(v) for k, v in params.items()}
    loss = lambda p: functional_call(model, p, (x,)).square().mean()  # noqa: E731
    _, directional = jvp(loss, (params,), (tangent,))
    assert torch.isfinite(directional)
    # double backward (the Hessian-vector product route)
    live = dict(model.named_parameters())
    grads = torch.autograd.grad(loss(live), list(live.values()), create_graph=True)
    hvp = torch.autograd.grad(sum((g * tangent[k]).sum() for g, k in zip(grads, live)), list(live.values()))
    assert all(torch.isfinite(h).all() for h in hvp)

    fused = build_model("vit", GREY, depth=1, dim=32, heads=2, fused_attention=True).eval()
    fused.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.allclose(fused(x), model(x), atol=1e-5)


def test_vit_rejects_bad_shapes():
    with pytest.raises(ValueError, match="patch_size"):
        build_model("vit", GREY, patch_size=5)
    with pytest.raises(ValueError, match="heads"):
        build_model("vit", GREY, dim=30, heads=4)


def test_coords_model_is_the_task_start():
    task = build_task("rosenbrock")
    model = build_model("coords", task)
    assert [name for name, _ in model.named_parameters()] == ["theta"]
    assert model.theta.tolist() == pytest.approx([-1.2, 1.0])
    assert build_model("coords", task) is not model  # a fresh point each time


@pytest.mark.parametrize("model", ["mlp", "linear", "cnn", "resnet18", "vit"])
@pytest.mark.parametrize("task", ["quadratic", "rosenbrock", "beale"])
def test_data_models_refuse_coordinate_tasks(model, task):
    with pytest.raises(IncompatibleModelError) as error:
        build_model(model, build_task(task))
    assert "\n" not in str(error.value) and "coords" in str(error.value)
    assert isinstance(error.value, ValueError)


@pytest.mark.parametrize("model", ["cnn", "resnet18", "vit"])
def test_image_models_refuse_vector_tasks(model):
    with pytest.raises(ValueError, match=f"{model}.*images.*logreg"):
        build_model(model, build_task("logreg"))


def test_coords_refuses_data_tasks():
    with pytest.raises(ValueError, match="coordinate problem.*teacher"):
        build_model("coords", build_task("teacher"))
