"""Synthetic supervised problems generated in memory: no files, no network, seconds to run.

The data are a function of the task's own ``seed`` option (the problem instance), not of
the run's seed, so a sweep over run seeds trains on the same data; the run's seed still
drives the model's initialisation and the batch order.
"""

from __future__ import annotations

import torch
from genlr.tasks.in_memory import InMemoryTask


class LogisticRegression(InMemoryTask):
    """Multinomial logistic regression on Gaussian inputs labelled by a random linear teacher.

    Inputs are ``N(0, diag(s))`` with per-feature scales ``s`` log-spaced over two decades
    (so that the problem is not perfectly conditioned); the label is the argmax of a random
    linear map, then replaced by a uniformly random class with probability ``label_noise``,
    which keeps the data nearly but not exactly separable (so the optimum is finite).
    Cross-entropy loss; accuracy is reported. ``classes=2`` is the binary case.

    Options:
        dim, classes: input features and classes.
        train_samples, test_samples: sizes of the two splits.
        label_noise: probability that a label is resampled uniformly.
        seed: the problem instance.
    """

    name = "logreg"
    classification = True
    default_model = "linear"

    def __init__(self, *, dim: int = 20, classes: int = 2, train_samples: int = 4096,
                 test_samples: int = 1024, label_noise: float = 0.05, seed: int = 0) -> None:
        super().__init__()
        if classes < 2:
            raise ValueError("logreg needs classes >= 2")
        self.input_shape = (dim,)
        self.num_outputs = classes
        self.dim, self.classes, self.label_noise, self.seed = dim, classes, label_noise, seed
        self.sizes = (train_samples, test_samples)

    def examples_before_loading(self) -> int:
        return self.sizes[0]

    def load(self):
        generator = torch.Generator().manual_seed(self.seed)
        scales = torch.logspace(0, -2, self.dim).sqrt()
        weights = torch.randn(self.dim, self.classes, generator=generator)
        splits = []
        for n in self.sizes:
            x = torch.randn(n, self.dim, generator=generator) * scales
            y = (x / scales @ weights).argmax(dim=1)
            noisy = torch.rand(n, generator=generator) < self.label_noise
            y = torch.where(noisy, torch.randint(0, self.classes, (n,), generator=generator), y)
            splits.append((x, y))
        return splits[0], splits[1]


class TeacherStudent(InMemoryTask):
    """Regression onto a random teacher MLP: ``y = teacher(x) + noise * eps``, MSE loss.

    The teacher is a one-hidden-layer tanh network with Gaussian weights scaled by
    ``1/sqrt(fan_in)``; inputs are standard normal. The student is any model that takes
    vectors (``mlp`` by default), so over- and under-parametrised students can be compared.

    Options:
        dim: input features; outputs: output dimension.
        teacher_hidden: hidden units of the teacher.
        noise: standard deviation of the label noise (the Bayes-optimal MSE is noise^2).
        train_samples, test_samples: sizes of the two splits.
        seed: the problem instance (teacher and data).
    """

    name = "teacher"
    classification = False
    default_model = "mlp"

    def __init__(self, *, dim: int = 20, outputs: int = 1, teacher_hidden: int = 32,
                 noise: float = 0.01, train_samples: int = 4096, test_samples: int = 1024,
                 seed: int = 0) -> None:
        super().__init__()
        self.input_shape = (dim,)
        self.num_outputs = outputs
        self.dim, self.outputs, self.hidden, self.noise, self.seed = dim, outputs, teacher_hidden, noise, seed
        self.sizes = (train_samples, test_samples)
        # Drawn from a private generator (not nn.Linear's init) so that the teacher depends on
        # ``seed`` only and building the task leaves the global RNG, hence model init, alone.
        generator = torch.Generator().manual_seed(seed)
        self.teacher_weights = (
            torch.randn(dim, teacher_hidden, generator=generator) / dim ** 0.5,
            torch.randn(teacher_hidden, generator=generator) * 0.1,
            torch.randn(teacher_hidden, outputs, generator=generator) / teacher_hidden ** 0.5,
            torch.randn(outputs, generator=generator) * 0.1,
        )
        self._data_state = generator.get_state()  # the data continue the same stream

    def teacher(self, x: torch.Tensor) -> torch.Tensor:
        w1, b1, w2, b2 = (w.to(x.device) for w in self.teacher_weights)
        return torch.tanh(x @ w1 + b1) @ w2 + b2

    def examples_before_loading(self) -> int:
        return self.sizes[0]

    def load(self):
        generator = torch.Generator()
        generator.set_state(self._data_state)
        splits = []
        for n in self.sizes:
            x = torch.randn(n, self.dim, generator=generator)
            y = self.teacher(x) + self.noise * torch.randn(n, self.outputs, generator=generator)
            splits.append((x, y))
        return splits[0], splits[1]
