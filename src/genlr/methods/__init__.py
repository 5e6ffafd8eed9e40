"""Learning-rate methods and their registry: ``lr=<name>`` on the command line."""

from __future__ import annotations

from genlr.methods.base import (
    IncompatibleOptimizerError,
    LRMethod,
    check_linear_in_lr,
)
from genlr.options import build
from genlr.methods.hypergradient import Hypergradient
from genlr.methods.polyak import Polyak
from genlr.methods.gen_exact import ExactGeN
from genlr.methods.gen_parabola import ParabolaGeN
from genlr.methods.newt import Newt
from genlr.methods.seeds import SEEDS
from genlr.methods.schedules import (
    Constant,
    Cosine,
    Linear,
    OneCycle,
    Plateau,
    Step,
    WarmupCosine,
)

METHODS: dict[str, type[LRMethod]] = {
    "constant": Constant,
    "step": Step,
    "cosine": Cosine,
    "warmup_cosine": WarmupCosine,
    "linear": Linear,
    "onecycle": OneCycle,
    "plateau": Plateau,
    "gen_exact": ExactGeN,
    "gen_parabola": ParabolaGeN,
    "newt": Newt,
    "polyak": Polyak,
    "hypergradient": Hypergradient,
}


def build_lr_method(name: str, optimizer, model=None, loss_fn=None, *, total_steps=None,
                    scaler=None, autocast=None, profile_every: int = 0, **options) -> LRMethod:
    """``METHODS[name](optimizer, model, loss_fn, ...)``: the name and the method's own
    ``options`` checked first against its signature (``genlr.options.build``), with the
    line gen-train prints; the rest is what every method takes (``LRMethod``)."""
    return build("lr", METHODS, name, options, optimizer, model, loss_fn, total_steps=total_steps,
                 scaler=scaler, autocast=autocast, profile_every=profile_every)


__all__ = [
    "METHODS", "SEEDS", "LRMethod", "IncompatibleOptimizerError", "build_lr_method",
    "check_linear_in_lr",
    "Constant", "Step", "Cosine", "WarmupCosine", "Linear", "OneCycle", "Plateau",
    "ExactGeN", "ParabolaGeN", "Newt",
    "Polyak", "Hypergradient",
]
