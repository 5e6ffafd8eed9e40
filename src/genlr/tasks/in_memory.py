"""Tasks whose whole data set fits on the training device.

The examples live as tensors on the device (images as uint8, a quarter of the memory of
float32) and a batch is an index into them, so the hot path has no DataLoader, no worker
processes and no host-to-device copies. Images are converted and normalised per batch.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from genlr.tasks.base import Batch, Task, epoch_generator


class InMemoryTask(Task):
    """Supervised task over ``(inputs, targets)`` tensors held on the device.

    Subclasses provide the data through :meth:`load` (CPU tensors) and may override
    :meth:`prepare` (uint8 -> normalised float, augmentation). A batch is the tuple
    ``(inputs, targets)`` as the model and loss see them.

    Classification uses cross-entropy on integer labels; regression (``classification =
    False``) uses the mean squared error, averaged over output dimensions.
    """

    def __init__(self) -> None:
        self.device: torch.device | None = None
        self._train: tuple[torch.Tensor, torch.Tensor] | None = None
        self._test: tuple[torch.Tensor, torch.Tensor] | None = None

    # -------------------------------------------------------------- data, per subclass
    def load(self) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """``((x_train, y_train), (x_test, y_test))`` on the CPU."""
        raise NotImplementedError

    def prepare(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Stored inputs -> model inputs; ``generator`` is set for training batches only."""
        return x

    # ------------------------------------------------------------------- Task protocol
    def setup(self, device: torch.device | str = "cpu") -> None:
        device = torch.device(device)
        if self._train is not None and self.device == device:
            return
        train, test = self.load() if self._train is None else (self._train, self._test)
        self._train = tuple(t.to(device) for t in train)  # type: ignore[assignment]
        self._test = tuple(t.to(device) for t in test)  # type: ignore[assignment]
        self.device = device

    @property
    def train_size(self) -> int:
        return len(self._data("train")[1])

    @property
    def test_size(self) -> int:
        return len(self._data("test")[1])

    def train_examples(self) -> int | None:
        return self.train_size if self._train is not None else self.examples_before_loading()

    def examples_before_loading(self) -> int | None:
        """The training set's size as the task can tell it before loading (its options, the
        files' headers); None where it cannot."""
        return None

    def steps_per_epoch(self, batch_size: int) -> int:
        self.check_batch_size(batch_size)
        return self.train_size // batch_size

    def train_batches(self, batch_size: int, epoch: int, seed: int, start: int = 0) -> Iterator[Batch]:
        x, y = self._data("train")
        steps = self.steps_per_epoch(batch_size)
        generator = epoch_generator(seed, epoch)
        order = torch.randperm(len(y), generator=generator).to(x.device)
        # Augmentation draws from its own generator so that ``start`` can skip batches
        # without replaying their random crops: batch i's draws depend on (seed, epoch, i).
        for i in range(start, steps):
            index = order[i * batch_size:(i + 1) * batch_size]
            augment = epoch_generator(seed, epoch * 1_000_003 + i + 1)
            yield self.prepare(x[index], augment), y[index]

    def eval_batches(self, batch_size: int) -> Iterator[Batch]:
        x, y = self._data("test")
        for i in range(0, len(y), batch_size):
            yield self.prepare(x[i:i + batch_size]), y[i:i + batch_size]

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        x, y = batch
        return self._criterion(model(x), y, reduction="mean")

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        x, y = batch
        out = model(x)
        metrics = {
            "loss_sum": self._criterion(out, y, reduction="sum").float(),
            "count": torch.tensor(len(y), device=y.device),
        }
        if self.classification:
            metrics["correct"] = (out.argmax(dim=-1) == y).sum()
        return metrics

    # ---------------------------------------------------------------------- internals
    def _criterion(self, out: torch.Tensor, y: torch.Tensor, reduction: str) -> torch.Tensor:
        if self.classification:
            return F.cross_entropy(out.float(), y, reduction=reduction)
        per_example = F.mse_loss(out.float().reshape(y.shape), y, reduction="none")
        per_example = per_example.reshape(len(y), -1).mean(dim=1)
        return per_example.mean() if reduction == "mean" else per_example.sum()

    def _data(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        data = self._train if split == "train" else self._test
        if data is None:
            raise RuntimeError(f"task {self.name!r}: call setup(device) before asking for batches")
        return data
