"""The seed algorithms: the options under which each of genlr's curvature methods is, step
for step, the algorithm it grew from (docs/methods.md, "The seeds"). Each is replayed,
written out in float64, against the method in ``tests/test_seeds.py``.

    ExactGeN(optimizer, model, loss_fn, **SEEDS["gen_exact"].options)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Seed:
    method: str  # the registry name (``genlr.methods.METHODS``)
    source: str  # where the algorithm is written
    rule: str  # the algorithm, in one sentence
    options: dict[str, Any] = field(default_factory=dict)


SEEDS = {
    "gen_exact": Seed(
        "gen_exact", "Bu & Xu, ICLR 2025 (arXiv:2407.02772), the generalized Newton step",
        "every step at the minimiser of its own quadratic model on its training batch, "
        "lr = <g, d> / (d^T H d) lr",
        dict(rule="line_search", smoothing=0.0, every=1, max_factor=None, probe="same",
             scale="constant")),
    "gen_parabola": Seed(
        "gen_parabola", "Bu & Xu, ICLR 2025, Algorithm 1, and the authors' lr_parabola",
        "every 4th step a parabola through the next batch's loss at -1, 0 and 1 times the "
        "step; lr <- 0.9 lr + 0.1 clamp(alpha*, lr/2, 2 lr), kept where the parabola has "
        "no minimum ahead",
        dict(rule="line_search", smoothing=0.9, every=4, max_factor=2.0, probe="next",
             points=[-1.0, 0.0, 1.0], defer=False, scale="constant")),
    "newt": Seed(
        "newt", "Retsinas et al., ICASSP 2023, and its reference implementation",
        "lr *= clamp(1 + 1e-3 <g', u> / <g - g', u>, 0, 1.05) from the gradient g' at the "
        "step's end on the same batch; x0.1 whenever the loss there rose; lr in [1e-7, 1]",
        dict(lookahead="probe", lookahead_batch=None, scale_back_when="loss_rose")),
}
