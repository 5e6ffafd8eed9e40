"""Config schemas for every config group, generated from the library's registries.

Each option of a group (``conf/<group>/<name>.yaml``) starts its defaults list with
``/schema/<group>/<name>@_here_``: a dataclass made from the builder's signature
(``genlr.options``), so a typo'd key or a value of the wrong type fails at compose time.

Reading the signatures means importing the registries, and with them torch (seconds). The
table of options is therefore cached, as JSON in the user's cache folder, per version of
genlr's source: checking a command line and printing ``--help`` need no torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib.util
import json
import os
import tempfile
import typing
from pathlib import Path
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore

from gen_cli.objective import register_resolver
from genlr.options import Option, options_of
from genlr.spec import TrainerConfig

GROUPS = ("task", "model", "optimizer", "lr")
# group -> option name (conf/<group>/<name>.yaml, the builder's registry name) -> its options
Table = dict[str, dict[str, list[Option]]]
CACHE_FORMAT = 1
KEEP_CACHED = 8  # option tables of this many source versions stay cached


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


def registries() -> dict[str, dict[str, Any]]:
    """The library's registries, by config group (imports torch)."""
    from genlr.methods import METHODS
    from genlr.models import MODELS
    from genlr.optimizers import OPTIMIZERS
    from genlr.tasks import TASKS

    return {"task": TASKS, "model": MODELS, "optimizer": OPTIMIZERS, "lr": METHODS}


def live_table() -> Table:
    return {group: {name: options_of(builder) for name, builder in registry.items()}
            for group, registry in registries().items()}


def option_table() -> Table:
    """Every group's options: from the cache while genlr's source is unchanged, else read
    from the signatures (and cached)."""
    path = cache_path()
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        return _decode(json.loads(path.read_text(encoding="utf-8")))
    table = live_table()
    with contextlib.suppress(OSError, ValueError):  # an unwritable cache only costs time
        text = json.dumps({"format": CACHE_FORMAT, "table": _encode(table)})
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".options-")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
        # Keep the newest few: two installs of different versions share the folder.
        cached = sorted(path.parent.glob("options-*.json"), key=lambda f: f.stat().st_mtime)
        for old in cached[:-KEEP_CACHED]:
            old.unlink(missing_ok=True)
    return table


def cache_path() -> Path:
    """``<cache>/genlr/options-<digest of genlr's source>.json``."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "genlr" / f"options-{source_digest()}.json"


@functools.cache
def source_digest() -> str:
    """genlr's source as this process first read it: a process that loaded genlr before
    the source changed must not file its (old) table under the new source's name."""
    root = Path(importlib.util.find_spec("genlr").submodule_search_locations[0])
    digest = hashlib.sha256(str(CACHE_FORMAT).encode())
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:20]


_BASIC = {"bool": bool, "int": int, "float": float, "str": str, "Any": Any}


def _type_code(kind: Any) -> Any:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is typing.Union:
        return ["Optional", _type_code(next(a for a in args if a is not type(None)))]
    if origin is list:
        return ["List", _type_code(args[0])]
    for code, basic in _BASIC.items():
        if kind is basic:
            return code
    raise ValueError(f"no cache code for the option type {kind!r}")


def _type_of(code: Any) -> Any:
    if isinstance(code, list):
        wrapper, inner = code
        return {"Optional": typing.Optional, "List": typing.List}[wrapper][_type_of(inner)]
    return _BASIC[code]


def _encode(table: Table) -> dict:
    return {group: {name: [[o.name, _type_code(o.type), o.default,
                            None if o.choices is None else list(o.choices), o.length]
                           for o in options] for name, options in names.items()}
            for group, names in table.items()}


def _decode(data: dict) -> Table:
    if data["format"] != CACHE_FORMAT:
        raise ValueError("another cache format")
    return {group: {name: [Option(o[0], _type_of(o[1]), o[2],
                                  None if o[3] is None else tuple(o[3]), o[4]) for o in options]
                    for name, options in names.items()}
            for group, names in data["table"].items()}


def schema_of(group: str, name: str, options: list[Option]) -> type:
    """A dataclass with ``name`` and one field per option."""
    fields: list[tuple[str, Any, Any]] = [("name", str, dataclasses.field(default=name))]
    for option in options:
        default = option.default
        spec = (dataclasses.field(default_factory=lambda d=default: list(d))
                if isinstance(default, list) else dataclasses.field(default=default))
        fields.append((option.name, option.type, spec))
    title = "".join(part.title() for part in f"{group}_{name}".split("_"))
    return dataclasses.make_dataclass(f"{title}Options", fields)


def register_schemas(table: Table | None = None) -> Table:
    """Store every schema in Hydra's ConfigStore, and register the resolver the configs
    use (``objective_direction``); returns the option table used."""
    register_resolver()
    table = option_table() if table is None else table
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainSchema)
    store.store(group="schema/trainer", name="default", node=TrainerConfig)
    for group, names in table.items():
        for name, options in names.items():
            store.store(group=f"schema/{group}", name=name, node=schema_of(group, name, options))
    return table
