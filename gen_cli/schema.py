"""Config schemas for every config group, made from the library's registries.

Each option of a group (``conf/<group>/<name>.yaml``) starts its defaults list with
``/schema/<group>/<name>@_here_``: a dataclass with one field per keyword-only parameter of
the builder (``genlr.options``), so a typo'd key or a value of the wrong type fails at
compose time.

Reading the signatures means importing the registries, and with them torch (seconds). They
are therefore read once, by ``python -m gen_cli.schema``, into ``gen_cli/options.json``,
which is committed (``tests/test_cli.py`` checks that it equals the signatures): checking a
command line and printing ``--help`` read that file and import no torch.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import typing
from pathlib import Path
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore

from gen_cli.objective import register_resolver
from genlr.options import Option, Range, options_of
from genlr.spec import TrainerConfig

GROUPS = ("task", "model", "optimizer", "lr")
# group -> option name (conf/<group>/<name>.yaml, the builder's registry name) -> its options
Table = dict[str, dict[str, list[Option]]]
TABLE_FILE = Path(__file__).with_name("options.json")


@dataclasses.dataclass
class TrainSchema:
    """The top level of ``conf/train.yaml``."""

    task: Any = None
    model: Any = None
    optimizer: Any = None
    lr: Any = None
    trainer: Any = None  # typed, as the groups are, by its schema (conf/trainer/default.yaml)
    seed: int = 0
    # what gen-train returns to a sweeper (gen_cli/objective.py); None: the task's own metric
    objective: Optional[str] = None
    # the log-uniform range of optimizer.lr that experiment=tune_lr searches
    lr_range: List[float] = dataclasses.field(default_factory=lambda: [1e-5, 1e-1])
    # set by workload=<name> and its size (conf/workload/): recorded for the leaderboard
    workload: Optional[str] = None
    size: Optional[str] = None


def registries() -> dict[str, dict[str, Any]]:
    """The library's registries, by config group (imports torch)."""
    from genlr.methods import METHODS
    from genlr.models import MODELS
    from genlr.optimizers import OPTIMIZERS
    from genlr.tasks import TASKS

    return {"task": TASKS, "model": MODELS, "optimizer": OPTIMIZERS, "lr": METHODS}


def live_table() -> Table:
    """Every group's options, read from the signatures (imports torch)."""
    return {group: {name: options_of(builder) for name, builder in registry.items()}
            for group, registry in registries().items()}


@functools.cache
def option_table() -> Table:
    """Every group's options, as ``gen_cli/options.json`` holds them (no torch)."""
    data = json.loads(TABLE_FILE.read_text(encoding="utf-8"))
    return {group: {name: [Option(o["name"], _type_of(o["type"]), o["default"],
                                  tuple(o["choices"]) if "choices" in o else None, o.get("length"),
                                  Range.parse(o["range"]) if "range" in o else None)
                           for o in options] for name, options in names.items()}
            for group, names in data.items()}


def not_in_table(group: str, name: str) -> str:
    """The line for a config whose schema the option table lacks: an entry added to a
    registry since ``python -m gen_cli.schema`` last wrote it."""
    return (f"{group}={name}: gen_cli/options.json has no options for it; after adding it to "
            f"the registry, run python -m gen_cli.schema (and commit gen_cli/options.json)")


def table_text(table: Table) -> str:
    """``gen_cli/options.json`` for ``table``: one option a line."""
    def option(o: Option) -> str:
        fields = {"name": o.name, "type": _type_name(o.type), "default": o.default}
        fields.update({"choices": list(o.choices)} if o.choices is not None else {})
        fields.update({"length": o.length} if o.length is not None else {})
        fields.update({"range": str(o.range)} if o.range is not None else {})
        return json.dumps(fields)

    groups = []
    for group, names in table.items():
        entries = [f'    "{name}": [' + "".join(f"\n      {option(o)}," for o in options).rstrip(",")
                   + ("\n    ]" if options else "]") for name, options in names.items()]
        groups.append(f'  "{group}": {{\n' + ",\n".join(entries) + "\n  }")
    return "{\n" + ",\n".join(groups) + "\n}\n"


_BASIC = {"bool": bool, "int": int, "float": float, "str": str, "Any": Any}
_WRAPPERS = {"Optional": Optional, "List": List}


def _type_name(kind: Any) -> str:
    """``Optional[List[float]]`` for that type (the annotations ``options_of`` makes)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is typing.Union:
        return f"Optional[{_type_name(next(a for a in args if a is not type(None)))}]"
    if origin is list:
        return f"List[{_type_name(args[0])}]"
    name = next((name for name, basic in _BASIC.items() if kind is basic), None)
    if name is None:
        raise ValueError(f"no schema type for the option type {kind!r}")
    return name


def _type_of(name: str) -> Any:
    wrapper, _, inner = name.partition("[")
    return _WRAPPERS[wrapper][_type_of(inner[:-1])] if inner else _BASIC[name]


def schema_of(group: str, name: str | None, options: list[Option]) -> type:
    """A dataclass with ``name`` (None: without, as the trainer's) and one field per option,
    of a type OmegaConf takes (a ``Literal``'s choices are ``check_options``' to judge)."""
    fields: list[tuple[str, Any, Any]] = [] if name is None else [
        ("name", str, dataclasses.field(default=name))]
    for option in options:
        default = option.default
        spec = (dataclasses.field(default_factory=lambda d=default: list(d))
                if isinstance(default, list) else dataclasses.field(default=default))
        fields.append((option.name, option.type, spec))
    title = "".join(part.title() for part in f"{group}_{name or ''}".split("_"))
    return dataclasses.make_dataclass(f"{title}Options", fields)


def register_schemas() -> Table:
    """What gen-train's configs need before Hydra composes them: every schema in Hydra's
    ConfigStore and the resolver they call (``objective_direction``). Each command that
    composes calls it (gen-train's ``main``, gen-suite); returns the option table."""
    register_resolver()
    table = option_table()
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainSchema)
    store.store(group="schema/trainer", name="default",
                node=schema_of("trainer", None, options_of(TrainerConfig)))
    for group, names in table.items():
        for name, options in names.items():
            store.store(group=f"schema/{group}", name=name, node=schema_of(group, name, options))
    return table


if __name__ == "__main__":  # python -m gen_cli.schema: write gen_cli/options.json
    TABLE_FILE.write_text(table_text(live_table()), encoding="utf-8")
    print(f"wrote {TABLE_FILE}")
