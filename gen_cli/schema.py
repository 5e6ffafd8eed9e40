"""Config schemas for every config group, generated from the library's registries.

Each option of a group (``conf/<group>/<name>.yaml``) starts its defaults list with
``/schema/<group>/<name>@_here_``: a dataclass made from the builder's signature
(``genlr.options``), so a typo'd key or a value of the wrong type fails at compose time.
"""

from __future__ import annotations

import dataclasses
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore

from gen_cli.objective import register_resolver

from genlr.engine import TrainerConfig
from genlr.methods import METHODS
from genlr.models import MODELS
from genlr.optimizers import OPTIMIZERS
from genlr.options import options_of
from genlr.tasks import TASKS

REGISTRIES: dict[str, dict[str, Any]] = {
    "task": TASKS,
    "model": MODELS,
    "optimizer": OPTIMIZERS,
    "lr": METHODS,
}


@dataclasses.dataclass
class TrainSchema:
    """The top level of ``conf/train.yaml``."""

    task: Any = None
    model: Any = None
    optimizer: Any = None
    lr: Any = None
    trainer: TrainerConfig = dataclasses.field(default_factory=TrainerConfig)
    seed: int = 0
    # what gen-train returns to a sweeper (gen_cli/objective.py); None: the task's own metric
    objective: Optional[str] = None
    # the log-uniform range of optimizer.lr that experiment=tune_lr searches
    lr_range: List[float] = dataclasses.field(default_factory=lambda: [1e-5, 1e-1])
    # set by workload=<name> and its size (conf/workload/): recorded for the leaderboard
    workload: Optional[str] = None
    size: Optional[str] = None


def schema_of(group: str, name: str, builder: Any) -> type:
    """A dataclass with ``name`` and one field per option of ``builder``."""
    fields: list[tuple[str, Any, Any]] = [("name", str, dataclasses.field(default=name))]
    for option in options_of(builder):
        default = option.default
        spec = (dataclasses.field(default_factory=lambda d=default: list(d))
                if isinstance(default, list) else dataclasses.field(default=default))
        fields.append((option.name, option.type, spec))
    title = "".join(part.title() for part in f"{group}_{name}".split("_"))
    return dataclasses.make_dataclass(f"{title}Options", fields)


def register_schemas() -> None:
    """The schemas, and the resolver the configs use (``objective_direction``)."""
    register_resolver()
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainSchema)
    store.store(group="schema/trainer", name="default", node=TrainerConfig)
    for group, registry in REGISTRIES.items():
        for name, builder in registry.items():
            store.store(group=f"schema/{group}", name=name, node=schema_of(group, name, builder))
