"""Deterministic test functions whose "model" is the point being optimised.

Quadratic, Rosenbrock and Beale are the problems on which a learning-rate rule can be
checked against a known answer: the quadratic's exact line-search step is
``g^T g / g^T A g`` for gradient descent, and GeN's ``s* = -phi'(0)/phi''(0)`` must equal
it; Rosenbrock and Beale are the 2-D problems of the GeN paper (Bu & Xu, "Gradient
descent with generalized Newton's method", ICLR 2025), with minimisers (1, 1) and (3, 0.5).

There is no data: a "batch" is the step's index within the epoch (an ``int``), which the
loss ignores, and an epoch is ``steps_per_epoch`` option steps long, so that the engine's
epoch-based schedule, evaluation and checkpoint cadence work unchanged. The run's seed
enters through the start point alone: ``start + start_noise * N(0, I)``, drawn from the
global RNG as a model's initialisation is (``start_noise=0``: every seed gives the same run).
``evaluate`` reports ``loss_sum`` and ``count`` (1), plus ``distance_sum`` (Euclidean
distance to the minimiser) and ``gap_sum`` (``f - f*``), which average like the loss.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
from torch import nn

from genlr.tasks.base import Batch, Task


class Coordinates(nn.Module):
    """A point as the only parameter; ``forward`` returns it (any argument is ignored)."""

    def __init__(self, start: torch.Tensor) -> None:
        super().__init__()
        self.theta = nn.Parameter(start.detach().clone())

    def forward(self, *_unused) -> torch.Tensor:
        return self.theta


class CoordinateTask(Task):
    """Common machinery: the objective ``f(theta)``, a start point and a known minimiser."""

    input_shape = ()
    num_outputs = 1
    classification = False
    default_model = "coords"

    def __init__(self, *, steps_per_epoch: int = 100, start_noise: float = 0.0) -> None:
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be at least 1, got {steps_per_epoch}")
        if start_noise < 0:
            raise ValueError(f"start_noise must be >= 0, got {start_noise}")
        self._steps = steps_per_epoch
        self.start_noise = start_noise
        self.device = torch.device("cpu")

    @property
    def depends_on_seed(self) -> bool:
        return self.start_noise > 0

    # ---------------------------------------------------------------- per problem
    def objective(self, theta: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def start(self) -> torch.Tensor:
        raise NotImplementedError

    def optimum(self) -> torch.Tensor:
        raise NotImplementedError

    # ------------------------------------------------------------------ protocol
    def setup(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)

    def init_model(self) -> nn.Module:
        start = self.start()
        if self.start_noise:
            start = start + self.start_noise * torch.randn(start.shape)
        return Coordinates(start).to(self.device)

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        # The model is called without the batch: a changing int argument would make a
        # torch.compile'd model recompile at every step.
        return self.objective(model())

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        theta = model()
        loss = self.objective(theta).float()
        optimum = self.optimum().to(theta)
        return {
            "loss_sum": loss,
            "count": torch.tensor(1, device=theta.device),
            "distance_sum": torch.linalg.vector_norm(theta - optimum).float(),
            "gap_sum": loss - self.objective(optimum).float(),
        }

    def train_batches(self, batch_size: int, epoch: int, seed: int, start: int = 0) -> Iterator[Batch]:
        return iter(range(start, self._steps))

    def eval_batches(self, batch_size: int) -> Iterator[Batch]:
        return iter([0])

    def steps_per_epoch(self, batch_size: int) -> int:
        return self._steps


class Quadratic(CoordinateTask):
    """``f(theta) = 1/2 theta^T A theta - b^T theta`` with A symmetric positive definite.

    A's eigenvalues are log-spaced from 1 to ``condition`` in a random orthonormal basis, so
    the problem is as ill-conditioned as asked; b is standard normal; the start is
    ``start_noise * N(0, I)`` (drawn from the run's seed) and the minimiser is ``A^{-1} b``.
    ``A`` and ``b`` are attributes (after ``setup``), so exact quantities such as the
    steepest-descent line-search step ``g^T g / g^T A g`` can be checked.

    Options:
        dim: number of coordinates.
        condition: ratio of A's largest to smallest eigenvalue.
        seed: the problem instance (A and b); independent of the run's seed, so a sweep
            over run seeds optimises the same function from different starts.
        steps_per_epoch: iterations counted as one epoch.
        start_noise: standard deviation of the random start around 0.
    """

    name = "quadratic"

    def __init__(self, *, dim: int = 20, condition: float = 100.0, seed: int = 0,
                 steps_per_epoch: int = 100, start_noise: float = 1.0) -> None:
        super().__init__(steps_per_epoch=steps_per_epoch, start_noise=start_noise)
        if dim < 1 or condition < 1:
            raise ValueError(f"quadratic needs dim >= 1 and condition >= 1, got dim={dim}, "
                             f"condition={condition}")
        self.dim, self.condition, self.seed = dim, condition, seed
        self.A: torch.Tensor | None = None

    def setup(self, device: torch.device | str = "cpu") -> None:
        super().setup(device)
        if self.A is None:  # here, not in __init__: checking a config builds the task too
            generator = torch.Generator().manual_seed(self.seed)
            basis, _ = torch.linalg.qr(torch.randn(self.dim, self.dim, generator=generator,
                                                   dtype=torch.float64))
            eigenvalues = torch.logspace(0, math.log10(self.condition), self.dim, dtype=torch.float64)
            a = basis @ torch.diag(eigenvalues) @ basis.T
            a = (a + a.T) / 2
            b = torch.randn(self.dim, generator=generator, dtype=torch.float64)
            self.A, self.b, self._optimum = a.float(), b.float(), torch.linalg.solve(a, b).float()
        self.A, self.b = self.A.to(self.device), self.b.to(self.device)

    def objective(self, theta: torch.Tensor) -> torch.Tensor:
        return 0.5 * theta @ (self.A.to(theta.dtype) @ theta) - self.b.to(theta.dtype) @ theta

    def start(self) -> torch.Tensor:
        return torch.zeros(self.dim)

    def optimum(self) -> torch.Tensor:
        return self._optimum.to(self.device)


class Rosenbrock(CoordinateTask):
    """Rosenbrock's valley, ``(1 - x)^2 + 100 (y - x^2)^2``; minimiser (1, 1), f* = 0.

    The default start (-1.2, 1) is Rosenbrock's own (1960) and the one of the standard test
    set of Moré, Garbow & Hillstrom (1981); one of the 2-D problems of Bu & Xu (ICLR 2025).
    With ``start_noise > 0`` the run's seed moves the start around (x0, y0).
    """

    name = "rosenbrock"

    def __init__(self, *, x0: float = -1.2, y0: float = 1.0, steps_per_epoch: int = 100,
                 start_noise: float = 0.0) -> None:
        super().__init__(steps_per_epoch=steps_per_epoch, start_noise=start_noise)
        self.x0, self.y0 = x0, y0

    def objective(self, theta: torch.Tensor) -> torch.Tensor:
        x, y = theta[0], theta[1]
        return (1 - x) ** 2 + 100 * (y - x ** 2) ** 2

    def start(self) -> torch.Tensor:
        return torch.tensor([self.x0, self.y0])

    def optimum(self) -> torch.Tensor:
        return torch.tensor([1.0, 1.0], device=self.device)


class Beale(CoordinateTask):
    """Beale's function, ``sum_i (c_i - x + x y^i)^2`` with c = (1.5, 2.25, 2.625);
    minimiser (3, 0.5), f* = 0.

    The default start (1, 1) is the one of Moré, Garbow & Hillstrom (1981); one of the 2-D
    problems of Bu & Xu (ICLR 2025). With ``start_noise > 0`` the run's seed moves the start
    around (x0, y0).
    """

    name = "beale"

    def __init__(self, *, x0: float = 1.0, y0: float = 1.0, steps_per_epoch: int = 100,
                 start_noise: float = 0.0) -> None:
        super().__init__(steps_per_epoch=steps_per_epoch, start_noise=start_noise)
        self.x0, self.y0 = x0, y0

    def objective(self, theta: torch.Tensor) -> torch.Tensor:
        x, y = theta[0], theta[1]
        return ((1.5 - x + x * y) ** 2 + (2.25 - x + x * y ** 2) ** 2
                + (2.625 - x + x * y ** 3) ** 2)

    def start(self) -> torch.Tensor:
        return torch.tensor([self.x0, self.y0])

    def optimum(self) -> torch.Tensor:
        return torch.tensor([3.0, 0.5], device=self.device)
