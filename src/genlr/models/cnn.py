"""The two-convolution network of the PyTorch MNIST example (pytorch/examples, mnist/main.py).

conv3x3(32) -> ReLU -> conv3x3(64) -> ReLU -> maxpool2 -> dropout -> fc(128) -> ReLU ->
dropout -> fc(classes). The methods' costs in docs/methods.md were measured on it.
"""

from __future__ import annotations

from torch import nn

from genlr.models.compat import image_shape
from genlr.tasks.base import Task


def cnn(task: Task, *, dropout1: float = 0.25, dropout2: float = 0.5,
        batchnorm: bool = False) -> nn.Module:
    """Options:
        dropout1: after the pooling (the example's 0.25); dropout2: after fc1 (0.5).
        batchnorm: BatchNorm after each convolution (not in the example; useful to test
            that probes leave running statistics alone).
    """
    channels, height, width = image_shape(task, "cnn")
    if height < 6 or width < 6:
        raise ValueError(f"cnn needs images of at least 6x6, task {task.name!r} has {height}x{width}")

    def conv(c_in: int, c_out: int) -> list[nn.Module]:
        # A bias before BatchNorm is redundant (BN subtracts the mean).
        layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, 1, bias=not batchnorm)]
        return layers + ([nn.BatchNorm2d(c_out)] if batchnorm else []) + [nn.ReLU()]

    features = 64 * ((height - 4) // 2) * ((width - 4) // 2)
    return nn.Sequential(
        *conv(channels, 32), *conv(32, 64), nn.MaxPool2d(2), nn.Dropout(dropout1), nn.Flatten(),
        nn.Linear(features, 128), nn.ReLU(), nn.Dropout(dropout2), nn.Linear(128, task.num_outputs),
    )
