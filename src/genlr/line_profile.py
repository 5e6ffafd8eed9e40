"""``LineProfile``: the loss along one update direction against the learning-rate method's
model of it. Methods record it (``LRMethod.record_profile``), the engine hands it to the
writer, and ``genlr.tracking`` draws it as the ``method/line_profile`` image; this class is
the whole contract between them (docs/design.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class LineProfile:
    """``phi(s) = L(theta - s*d)`` on a grid of ``s`` for the step ``d`` of one training step.

    ``s`` is in units of the method's own step (each method documents which); ``loss`` is
    the measured ``phi``, ``model`` the method's quadratic model of it at the same points,
    and ``chosen`` the ``s`` the method picked (NaN when it picked none).
    """

    step: int  # the method's step count when it was recorded
    s: tuple[float, ...]
    loss: tuple[float, ...]
    model: tuple[float, ...]
    chosen: float = math.nan

    def __post_init__(self) -> None:
        if not len(self.s) == len(self.loss) == len(self.model):
            raise ValueError(f"s, loss and model need one value per point, got "
                             f"{len(self.s)}, {len(self.loss)}, {len(self.model)}")
