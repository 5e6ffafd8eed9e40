"""Tasks and their registry: ``task=<name>`` on the command line.

Each entry is a :class:`Task` subclass whose keyword-only constructor parameters are its
options (see ``genlr.options``).
"""

from __future__ import annotations

from genlr.options import build
from genlr.tasks.base import DatasetNotFoundError, Task, epoch_generator
from genlr.tasks.coordinates import Beale, Coordinates, CoordinateTask, Quadratic, Rosenbrock
from genlr.tasks.images import CIFAR10, MNIST, FashionMNIST, default_data_root, read_idx
from genlr.tasks.in_memory import InMemoryTask
from genlr.tasks.synthetic import LogisticRegression, TeacherStudent
from genlr.tasks.text import CharLM

TASKS: dict[str, type[Task]] = {
    "fashion_mnist": FashionMNIST,
    "mnist": MNIST,
    "cifar10": CIFAR10,
    "charlm": CharLM,
    "quadratic": Quadratic,
    "rosenbrock": Rosenbrock,
    "beale": Beale,
    "logreg": LogisticRegression,
    "teacher": TeacherStudent,
}


def build_task(name: str, **options) -> Task:
    """The task ``name`` with ``options`` (its constructor's keyword-only parameters)."""
    return build("task", TASKS, name, options)


__all__ = [
    "TASKS", "build_task", "Task", "DatasetNotFoundError", "epoch_generator", "InMemoryTask",
    "CoordinateTask", "Coordinates", "Quadratic", "Rosenbrock", "Beale", "FashionMNIST", "MNIST",
    "CIFAR10", "CharLM", "LogisticRegression", "TeacherStudent", "default_data_root", "read_idx",
]
