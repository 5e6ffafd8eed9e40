"""Models and their registry: ``model=<name>`` on the command line.

Each builder is ``builder(task, *, option=default, ...) -> nn.Module``: input shape and
number of outputs come from the task; the keyword-only parameters are the options (see
``genlr.options``). A model that cannot take the task's inputs raises
:class:`IncompatibleModelError` (a ``ValueError``) with a one-line message.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from genlr.models.cnn import cnn
from genlr.models.compat import IncompatibleModelError
from genlr.models.gpt import gpt
from genlr.models.mlp import linear, mlp
from genlr.models.resnet import resnet18
from genlr.models.vit import vit
from genlr.options import build
from genlr.tasks.base import Task


def coords(task: Task) -> nn.Module:
    """The coordinates of a coordinate problem (quadratic, rosenbrock, beale) as the model."""
    model = task.init_model()
    if model is None:
        raise IncompatibleModelError(
            f"model 'coords' needs a coordinate problem (quadratic, rosenbrock, beale); "
            f"task {task.name!r} has data (use model={task.default_model})")
    return model


MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp,
    "linear": linear,
    "cnn": cnn,
    "resnet18": resnet18,
    "vit": vit,
    "gpt": gpt,
    "coords": coords,
}


def build_model(name: str, task: Task, **options) -> nn.Module:
    """The model ``name`` sized for ``task``, with ``options`` (the builder's keyword-only parameters)."""
    return build("model", MODELS, name, options, task)


__all__ = ["MODELS", "build_model", "IncompatibleModelError", "mlp", "linear", "cnn", "resnet18", "vit", "gpt", "coords"]
