"""What a task is: data, a loss, and metrics. Models and LR methods meet it only here.

A task owns its data (held as tensors on the training device when small, a DataLoader
otherwise), its loss ``loss(model, batch) -> scalar`` (the function the LR methods probe),
and ``evaluate(model, batch)`` which returns sums so that the engine can average exactly
over an uneven last batch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Iterator

import torch
from torch import nn

from genlr.options import SettingError

Batch = Any


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is neither on disk where the task looked nor downloadable.

    The message is one line: where the task looked and how to get the data.
    """


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator for one epoch's shuffle, a function of ``(seed, epoch)`` only.

    A CPU generator gives the same permutation on every device, so a run resumed on another
    machine sees the same batches. The two integers are mixed (not added) so that
    ``(seed, epoch + 1)`` and ``(seed + 1, epoch)`` do not share an order.
    """
    mixed = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB)
    return torch.Generator().manual_seed(mixed % (2**63))


class Task(ABC):
    """A training problem.

    Attributes:
        name: the registry name (``task=<name>``).
        input_shape: shape of one example (e.g. ``(1, 28, 28)``); ``()`` for problems whose
            model is the coordinates themselves (quadratic, rosenbrock, beale).
        num_outputs: classes for classification, output dimension for regression.
        classification: whether ``evaluate`` reports accuracy.
        default_model: the model used when the config does not say (``coords`` for the
            coordinate problems).
        tokens: whether the inputs are integer ids (language modelling), whose alphabet
            size is ``num_outputs``.
    """

    name: str
    input_shape: tuple[int, ...] = ()
    num_outputs: int = 1
    classification: bool = False
    default_model: str = "mlp"
    tokens: bool = False

    def prepare_data(self) -> None:
        """Make sure the data is on disk (downloading it if the task may), without reading
        it; raise :class:`DatasetNotFoundError` (one line) if it cannot be had. gen-train
        calls it before a run starts; ``setup`` calls it too."""

    def train_examples(self) -> int | None:
        """How many training examples an epoch draws its batches from (a language model:
        its windows); before the data is loaded, what the task can tell cheaply (its
        options, file headers), or None where only loading would tell."""
        return None

    def check_batch_size(self, batch_size: int) -> None:
        """Refuse, in one line, a training batch larger than the training set: gen-train
        and ``build_run`` call it before the data loads, ``steps_per_epoch`` after."""
        examples = self.train_examples()
        if examples is not None and batch_size > examples:
            raise SettingError(f"trainer.batch_size={batch_size}: task {self.name} has "
                             f"{examples} training {self.examples_are}; choose at most {examples}")

    @property
    def examples_are(self) -> str:
        """What one training example is, in a refusal (``examples``)."""
        return "examples"

    @property
    def depends_on_seed(self) -> bool:
        """Whether the run's seed changes anything (model initialisation, batch order, a
        random start); gen-train refuses a seed given for a task that ignores it."""
        return True

    def setup(self, device: torch.device) -> None:
        """Load or generate the data and move what fits onto ``device``. Called once."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Mean training loss of ``model`` on ``batch`` (differentiable)."""

    @abstractmethod
    def evaluate(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        """Sums over the batch: ``loss_sum``, ``count`` and, for classification, ``correct``."""

    @abstractmethod
    def train_batches(self, batch_size: int, epoch: int, seed: int, start: int = 0) -> Iterator[Batch]:
        """One epoch of shuffled training batches (deterministic in ``seed`` and ``epoch``),
        skipping the first ``start`` batches (resume)."""

    @abstractmethod
    def eval_batches(self, batch_size: int) -> Iterator[Batch]:
        """The evaluation set (test split, or held-out samples), in a fixed order."""

    @abstractmethod
    def steps_per_epoch(self, batch_size: int) -> int:
        """Number of training batches per epoch (the last, partial batch is dropped)."""

    def init_model(self) -> nn.Module | None:
        """For coordinate problems, the model holding the starting point; else None."""
        return None

    def optimum(self) -> torch.Tensor | None:
        """Known minimiser, where there is one (synthetic problems)."""
        return None
