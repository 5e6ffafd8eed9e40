"""Multi-layer perceptron on flattened inputs."""

from __future__ import annotations

from typing import Literal

from torch import nn

from genlr.models.compat import flat_features
from genlr.tasks.base import Task

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}
Activation = Literal[tuple(ACTIVATIONS)]  # the choices are the table's names


def mlp(task: Task, *, hidden: tuple[int, ...] = (256, 256), activation: Activation = "relu",
        dropout: float = 0.0) -> nn.Module:
    """``Flatten -> [Linear -> activation -> Dropout] * len(hidden) -> Linear``.

    Options:
        hidden: widths of the hidden layers (``[]``: a linear model).
        activation: after each hidden layer (``ACTIVATIONS``).
        dropout: after each hidden activation (0 disables it).
    """
    width = flat_features(task, "mlp")
    layers: list[nn.Module] = [nn.Flatten()]
    for size in hidden:
        layers += [nn.Linear(width, size), ACTIVATIONS[activation]()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = size
    layers.append(nn.Linear(width, task.num_outputs))
    return nn.Sequential(*layers)


def linear(task: Task, *, bias: bool = True) -> nn.Module:
    """A single linear layer on flattened inputs (logistic regression on ``logreg``)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(flat_features(task, "linear"), task.num_outputs, bias=bias))
