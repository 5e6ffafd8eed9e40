"""What a model needs from a task, checked before building so that a mismatch is one line."""

from __future__ import annotations

import math

from genlr.tasks.base import Task


class IncompatibleModelError(ValueError):
    """The model cannot take the task's inputs (e.g. ``cnn`` on ``quadratic``)."""


def flat_features(task: Task, model: str) -> int:
    """Input size of a model that flattens each example; tasks without inputs are refused."""
    if task.tokens:
        raise IncompatibleModelError(
            f"model {model!r} needs numeric inputs; task {task.name!r} has character ids "
            f"(use model={task.default_model})")
    if not task.input_shape:
        raise IncompatibleModelError(
            f"model {model!r} needs a task with inputs; task {task.name!r} optimises coordinates "
            f"(use model=coords)")
    return math.prod(task.input_shape)


def image_shape(task: Task, model: str) -> tuple[int, int, int]:
    """``(channels, height, width)`` of an image task; other tasks are refused."""
    if len(task.input_shape) != 3:
        shape = "coordinates" if not task.input_shape else f"inputs of shape {tuple(task.input_shape)}"
        raise IncompatibleModelError(
            f"model {model!r} needs images (channels, height, width); task {task.name!r} has "
            f"{shape} (use model={task.default_model})")
    return tuple(task.input_shape)  # type: ignore[return-value]


def token_task(task: Task, model: str) -> tuple[int, int]:
    """``(alphabet size, context length)`` of a language task; other tasks are refused."""
    if not task.tokens:
        raise IncompatibleModelError(
            f"model {model!r} needs a language task (task=charlm); task {task.name!r} has "
            f"numeric inputs (use model={task.default_model})")
    return task.num_outputs, task.input_shape[0]
