"""Check a gen-train command line before Hydra starts anything, so that every bad input
gets one line naming the key, the bad value and what is allowed: never a traceback, never
a run folder left behind.

Hydra is set up as ``@hydra.main`` sets it up (``--config-dir``, ``--config-path``,
``--config-name``, search-path plugins), and every job a sweep would launch is composed.
The checks come in two stages. The first needs no torch: Hydra's parsing and composition,
names, keys, types and the values a signature can judge (choices, tuple lengths, finite
numbers), the trainer settings, Hydra's own settings, the output folder. The second builds
every job's components without data (what only the builders can judge), finds or
downloads the data, and reads the checkpoint a job resumes from.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import (InterpolationKeyError, OmegaConfBaseException,
                              UnsupportedInterpolationType)

from gen_cli.objective import objective_of
from gen_cli.schema import GROUPS, Table, TrainSchema, option_table, register_schemas, schema_of
from genlr.options import Option
from genlr.spec import RunSpec, TrainerConfig

# Where @hydra.main sits (Hydra resolves --config-path relative to it) and its primary config.
APP_MODULE = "gen_cli.train"
CONFIG_PATH = "pkg://gen_cli.conf"
CONFIG_NAME = "train"
TOP_LEVEL = tuple(field.name for field in dataclasses.fields(TrainSchema))
SEED_RANGE = (-(2**63), 2**64)  # what torch.manual_seed accepts


class UsageError(ValueError):
    """A bad command line; its message is one line."""


# ------------------------------------------------------------------------- Hydra's way
def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line as Hydra's own parser reads it; a bad flag raises UsageError."""
    from hydra._internal.utils import get_args_parser

    parser = get_args_parser()

    def error(message: str):
        raise UsageError(f"{message} (see gen-train --help)")

    parser.error = error  # argparse would print usage and exit: two lines
    return parser.parse_args(argv)


def hands_over_to_hydra(args: argparse.Namespace) -> bool:
    """--help, --cfg, --info, shell completion: Hydra's business, nothing runs."""
    return bool(args.help or args.hydra_help or args.cfg or args.info or args.shell_completion
                or args.resolve or args.experimental_rerun)


@contextlib.contextmanager
def hydra_as_main(args: argparse.Namespace) -> Iterator[Any]:
    """Hydra initialised the way ``@hydra.main`` initialises it for this command line
    (hydra._internal.utils._run_hydra): the app's configs, --config-path, --config-dir."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_automatic_config_search_path
    from hydra.core.config_search_path import SearchPathQuery

    search_path = create_automatic_config_search_path(None, APP_MODULE, args.config_path or CONFIG_PATH)
    if args.config_dir is not None:
        config_dir = os.path.abspath(args.config_dir)
        if not os.path.isdir(config_dir):
            raise UsageError(f"--config-dir {args.config_dir}: no such folder")
        search_path.prepend(provider="command-line", path=f"file://{config_dir}",
                            anchor=SearchPathQuery(provider="schema"))
    GlobalHydra.instance().clear()
    try:
        yield Hydra.create_main_hydra2(task_name="train", config_search_path=search_path)
    except OmegaConfBaseException as err:
        raise UsageError(_first_line(err)) from None
    finally:
        GlobalHydra.instance().clear()


# ---------------------------------------------------------------------- the whole check
def check_command_line(argv: list[str]) -> None:
    """Raise UsageError (one line) if any job the command line asks for cannot start."""
    args = parse_args(argv)
    if hands_over_to_hydra(args):
        return
    table = register_schemas()
    config_name = args.config_name or CONFIG_NAME
    overrides = list(args.overrides)
    parsed = _parse(overrides)
    with hydra_as_main(args) as hydra:
        _check_group_choices(parsed)
        try:
            mode = hydra.get_mode(config_name=config_name, overrides=overrides)
        except Exception as err:
            raise UsageError(_describe(err, overrides, hydra, config_name)) from None
        multirun = args.multirun or mode == RunMode.MULTIRUN
        first = _compose(hydra, config_name, _first_values(parsed), mode, with_hydra=True)
        jobs = _jobs(parsed, first, multirun)
        _check_hydra_settings(first, multirun)
        configs = []
        for job in jobs:
            _check_group_choices(_parse(job))
            cfg = _compose(hydra, config_name, job, mode, with_hydra=False)
            check_values(cfg, table)
            configs.append(cfg)
        run_dir = None if multirun else Path(str(OmegaConf.select(first, "hydra.run.dir")))
    seed_given = next((o.input_line for o in parsed if o.get_key_element() == "seed"), None)
    check_buildable(configs, run_dir, seed_given)


def _parse(overrides: list[str]) -> list[Override]:
    parser = OverridesParser.create()
    for line in overrides:  # one at a time, to name the one that does not parse
        try:
            parser.parse_override(line)
        except Exception as err:
            raise UsageError(f"cannot parse {line!r}: {_first_line(err)} (write key=value; quote "
                             "a value with special characters: key='a value')") from None
    return parser.parse_overrides(overrides)


def _check_group_choices(parsed: list[Override]) -> None:
    """``group=option`` for any config group, Hydra's included (hydra/launcher=...)."""
    loader = GlobalHydra.instance().config_loader()
    _check_size(loader, parsed)
    for override in parsed:
        group = override.key_or_group
        allowed = loader.get_group_options(group)
        if override.is_delete() or override.is_sweep_override() or not allowed:
            continue  # not a group (a value), or a sweep (each of its values comes here alone)
        value = override.value()
        if value is None:  # no option of an optional group (experiment=null)
            continue
        if not isinstance(value, str) or value not in allowed:
            raise UsageError(f"unknown {group} {value!r}; choose one of: {', '.join(allowed)}")


def _check_size(loader, parsed: list[Override]) -> None:
    """``size=`` picks a workload's size (conf/workload/sizes/<workload>_<size>.yaml)."""
    chosen = {o.key_or_group: o.value() for o in parsed
              if o.key_or_group in ("workload", "size") and not o.is_delete()
              and not o.is_sweep_override()}
    if "size" not in chosen:
        return
    workload = chosen.get("workload")
    if workload is None:
        raise UsageError(f"size={chosen['size']} sizes a workload: add workload=<name> (one of: "
                         f"{', '.join(loader.get_group_options('workload'))})")
    sizes = [name.removeprefix(f"{workload}_")
             for name in loader.get_group_options("workload/sizes") if name.startswith(f"{workload}_")]
    if chosen["size"] not in sizes:
        raise UsageError(f"workload {workload} has no size {chosen['size']!r}; choose one of: "
                         f"{', '.join(sizes)}")


def _first_values(parsed: list[Override]) -> list[str]:
    return [_values(o)[0] if o.is_sweep_override() and _values(o) else o.input_line for o in parsed]


def _values(override: Override) -> list[str]:
    """``key=value`` for each value an override takes (a sweep: each of its values)."""
    if not override.is_sweep_override():
        return [override.input_line]
    try:
        return [f"{override.get_key_element()}={v}" for v in override.sweep_string_iterator()]
    except Exception:  # glob sweeps and the like: Hydra expands and checks those itself
        return []


def _jobs(parsed: list[Override], first: DictConfig, multirun: bool) -> list[list[str]]:
    """Override lists that, between them, try every value of every sweep once (the others
    at their first value): linear in the sweep's size, not its product. The basic
    sweeper's ``hydra.sweeper.params`` (experiments) count as overrides before the
    command line's, as the sweeper itself takes them."""
    sweeps = [o.input_line for o in parsed if o.is_sweep_override()]
    if sweeps and not multirun:
        raise UsageError(f"{sweeps[0]!r} sweeps over several values: add -m to run them all, "
                         "or write a list as key=[a,b] or a string as key='a,b'")
    lines = [o.input_line for o in parsed]
    sweeper = OmegaConf.select(first, "hydra.sweeper")
    if multirun and sweeper is not None and str(sweeper.get("_target_", "")).endswith("BasicSweeper"):
        params = [f"{key}={value}" for key, value in (sweeper.get("params") or {}).items()]
        keys = {o.get_key_element() for o in parsed}
        lines = [p for p, o in zip(params, _parse(params)) if o.get_key_element() not in keys] + lines
    choices = [v for v in map(_values, _parse(lines)) if v]
    base = [values[0] for values in choices]
    jobs = [base]
    for i, values in enumerate(choices):
        jobs += [[*base[:i], v, *base[i + 1:]] for v in values[1:]]
    return jobs


def _compose(hydra, config_name: str, overrides: list[str], mode: RunMode,
             with_hydra: bool) -> DictConfig:
    try:
        cfg = hydra.compose_config(config_name=config_name, overrides=overrides, run_mode=mode)
        if with_hydra:
            _check_references(cfg.hydra, "hydra.")
        else:
            with contextlib.suppress(Exception):
                OmegaConf.set_struct(cfg, False)
                cfg.pop("hydra", None)
        return cfg
    except UsageError:
        raise
    except Exception as err:
        raise UsageError(_describe(err, overrides, hydra, config_name)) from None


# ------------------------------------------------------------------ error messages
def _first_line(err: BaseException) -> str:
    """Hydra and OmegaConf errors span several lines; keep the informative ones, joined."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    keep = [line for line in lines if not line.startswith(("full_key", "object_type",
                                                           "Set the environment", "To append",
                                                           "reference_type", "Config search",
                                                           "provider="))]
    return " ".join(keep[:2]) if keep else type(err).__name__


def _chain(err: BaseException) -> Iterator[BaseException]:
    while err is not None:
        yield err
        err = err.__cause__ or err.__context__


def _describe(err: BaseException, overrides: list[str], hydra, config_name: str) -> str:
    """One line for a composition error: the key, the value, what is allowed."""
    keyed = next((e for e in _chain(err) if isinstance(e, OmegaConfBaseException)
                  and getattr(e, "full_key", None)), None)
    if keyed is not None:
        key = keyed.full_key
        message = _first_line(keyed).removesuffix(".")
        if "not in" in message and ("Key" in message or "key" in message):
            parent, _, leaf = key.rpartition(".")
            others = [line for line in overrides
                      if line.lstrip("+~").split("=")[0] != key]
            with contextlib.suppress(Exception):
                cfg = hydra.compose_config(config_name=config_name, overrides=others,
                                           run_mode=RunMode.RUN)
                node = OmegaConf.select(cfg, parent) if parent else cfg
                keys = [k for k in node.keys() if k != "hydra"]
                return f"{key}: no such setting; choose one of: {', '.join(map(str, keys))}"
            # Not from the command line: a config (a workload, an experiment) sets it.
            chosen = next((line.split("=", 1)[1] for line in overrides
                           if line.split("=", 1)[0] == parent), None)
            options = option_table().get(parent, {}).get(chosen)
            if options is not None:
                return (f"{key}: {parent}={chosen} has no option {leaf!r}, which a config sets; "
                        f"its options: {', '.join(o.name for o in options)}")
            return f"{key}: no such setting"
        return f"{key}: {message}"
    text = _first_line(err)
    if text.startswith("Could not delete"):
        deleted = next((line[1:].split("=")[0] for line in overrides if line.startswith("~")), "")
        return (f"~{deleted}: a setting cannot be removed; give it a value instead "
                f"({deleted}=...)")
    return text


def _check_references(node: DictConfig | ListConfig, prefix: str) -> None:
    """Hydra's own settings resolve only once the run starts; an interpolation to a key that
    does not exist, or to an unknown resolver, fails then with a traceback, so find it now.
    (Values Hydra fills in at run time, still ``???`` here, are left alone.)"""
    keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
    for key in keys:
        if f"{prefix}{key}" in ("hydra.overrides", "hydra.help"):  # text, not settings
            continue
        try:
            value = node[key]
        except (InterpolationKeyError, UnsupportedInterpolationType) as err:
            raise UsageError(f"{prefix}{key}: {_first_line(err)}") from None
        except OmegaConfBaseException:
            continue
        if isinstance(value, (DictConfig, ListConfig)):
            _check_references(value, f"{prefix}{key}.")


# ------------------------------------------------------------------ stage 1: values
def check_values(cfg: DictConfig, table: Table) -> None:
    """What the config's own structure and the signatures can judge, without torch:
    every key known, every value of its type, within its choices, of its length, finite."""
    unknown = [key for key in cfg.keys() if key not in TOP_LEVEL]
    if unknown:
        raise UsageError(f"{unknown[0]}: not a gen-train setting; choose one of: {', '.join(TOP_LEVEL)}")
    for group in GROUPS:
        node = cfg.get(group)
        if not isinstance(node, DictConfig) or "name" not in node:
            raise UsageError(f"the config has no {group} (choose one with {group}=<name>)")
        name = node.name
        if name not in table[group]:
            raise UsageError(f"{group}.name={name!r}: unknown {group}; choose one of: "
                             f"{', '.join(table[group])}")
        options = {o.name: o for o in table[group][name]}
        for key in node.keys():
            if key != "name" and key not in options:
                raise UsageError(f"{group}.{key}: {group}={name} has no option {key!r}; choose one "
                                 f"of: {', '.join(options)}")
        try:  # user configs (--config-dir) may lack the schema: type-check them here
            schema = OmegaConf.structured(schema_of(group, name, list(options.values())))
            given = OmegaConf.to_container(node, resolve=True)
            values = OmegaConf.to_container(OmegaConf.merge(schema, given))
        except OmegaConfBaseException as err:
            key = err.full_key or ""
            key = key if key.startswith(f"{group}.") else f"{group}.{key}".rstrip(".")
            raise UsageError(f"{key}: {_first_line(err)}") from None
        for key, option in options.items():
            _check_option(f"{group}.{key}", values[key], option)
    seed = cfg.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise UsageError(f"seed={seed!r}: the seed must be an integer")
    if not SEED_RANGE[0] <= seed < SEED_RANGE[1]:
        raise UsageError(f"seed={seed}: out of range; choose an integer in [-2**63, 2**64)")
    try:
        trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    except OmegaConfBaseException as err:
        raise UsageError(f"{err.full_key or 'trainer'}: {_first_line(err)}") from None
    settings = [f.name for f in dataclasses.fields(TrainerConfig)]
    for key, value in trainer.items():
        if key not in settings:
            raise UsageError(f"trainer.{key}: no such setting; choose one of: {', '.join(settings)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"trainer.{key}={value}: not a finite number")
    try:
        TrainerConfig(**trainer)
    except (TypeError, ValueError) as err:
        raise UsageError(_first_line(err)) from None


def _check_option(key: str, value: Any, option: Option) -> None:
    items = value if isinstance(value, list) else [value]
    for item in items:
        if isinstance(item, float) and not math.isfinite(item):
            raise UsageError(f"{key}={value}: not a finite number")
    if option.choices is not None and value is not None and value not in option.choices:
        raise UsageError(f"{key}={value!r}: choose one of: {', '.join(map(str, option.choices))}")
    if option.length is not None and isinstance(value, list) and len(value) != option.length:
        raise UsageError(f"{key}={value}: needs {option.length} values, got {len(value)}")


def _check_hydra_settings(cfg: DictConfig, multirun: bool) -> None:
    """The output folder can be made, and the launcher can launch."""
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    out_dir = str(OmegaConf.select(cfg, key) or "")
    if not out_dir.strip():
        raise UsageError(f"{key} is empty; give the run a folder ({key}=runs/NAME)")
    check_writable(Path(out_dir), key)
    launcher = str(OmegaConf.select(cfg, "hydra.launcher._target_") or "")
    if launcher.endswith("SlurmLauncher") and shutil.which("sbatch") is None:
        raise UsageError("hydra/launcher=slurm: SLURM's sbatch is not on PATH (run from a SLURM "
                         "login node, or use hydra/launcher=submitit_local or joblib)")


def check_writable(out_dir: Path, key: str) -> None:
    """The folder can be created: a scratch folder can be made in its nearest existing
    ancestor (permissions alone say nothing for root, nor about /proc)."""
    existing = out_dir.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{key}={out_dir}: {existing} is not a directory")
    try:
        os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".gen-train-check-"))
    except OSError as err:
        raise UsageError(f"{key}={out_dir}: cannot create folders in {existing} "
                         f"({err.strerror or type(err).__name__})") from None


# ------------------------------------------------------------------ stage 2: torch
def spec_from_config(cfg) -> RunSpec:
    """The engine's RunSpec from a composed config (TrainerConfig validates its values)."""
    c = OmegaConf.to_container(cfg, resolve=True)
    for group in (*GROUPS, "trainer"):
        if not isinstance(c.get(group), dict) or (group != "trainer" and "name" not in c[group]):
            raise ValueError(f"the config has no {group} (choose one with {group}=<name>)")
    if not isinstance(c.get("seed"), int):
        raise ValueError("the config has no integer seed (set seed=<int>)")
    return RunSpec(task=c["task"], model=c["model"], optimizer=c["optimizer"], lr=c["lr"],
                   trainer=TrainerConfig(**c["trainer"]), seed=c["seed"])


def check_buildable(configs: list[DictConfig], run_dir: Path | None,
                    seed_given: str | None = None) -> None:
    """Build every job's components without data, on the CPU; find (or download) each
    task's data; the device and the strategy exist; a seed given on the command line
    changes something."""
    import torch

    from genlr.engine import build_run, resolve_device

    prepared: list[dict] = []
    for cfg in configs:
        spec = spec_from_config(cfg)
        try:
            run = build_run(spec, torch.device("cpu"), load_data=False)
        except Exception as err:
            raise UsageError(_builder_error(err)) from None
        try:
            objective_of(cfg.objective, spec.task["name"])
            resolve_device(spec.trainer.device)
        except ValueError as err:
            raise UsageError(_first_line(err)) from None
        if spec.trainer.strategy == "ddp" and not {"RANK", "WORLD_SIZE"} <= set(os.environ):
            raise UsageError("trainer.strategy=ddp needs torchrun: torchrun --nproc_per_node=N "
                             "$(which gen-train) trainer.strategy=ddp ...")
        check_resume(spec, run, run_dir)
        if seed_given and not run.task.depends_on_seed:
            raise UsageError(f"{seed_given}: task={spec.task['name']} does not depend on the seed "
                             "(a fixed start and no data); set task.start_noise > 0 to draw the "
                             "start from the seed")
        if spec.task not in prepared:
            prepared.append(spec.task)
            try:
                run.task.prepare_data()
            except (OSError, ValueError) as err:
                raise UsageError(_first_line(err)) from None


def check_resume(spec: RunSpec, run, run_dir: Path | None) -> None:
    """The checkpoint to resume from exists, is readable, was trained with this config
    (or trainer.resume_with_changes says to go on) and fits the run's components; the run
    folder is not in use by another run."""
    from genlr.engine import RunDirInUse, WallClock, load_checkpoint, resume_path, run_dir_lock
    from genlr.tracking import RunStats

    if run_dir is not None and run_dir.is_dir():
        try:
            with run_dir_lock(run_dir):
                pass
        except RunDirInUse as err:
            raise UsageError(f"hydra.run.dir={err}") from None
    resume = spec.trainer.resume
    if resume is None or (run_dir is None and str(resume).lower() in ("true", "yes", "1", "auto")):
        return  # nothing to resume, or each sweep job's own folder (known once it runs)
    try:
        path = resume_path(resume, run_dir or Path("."))
        if path is not None:
            load_checkpoint(path, run, RunStats(), WallClock())
    except (OSError, ValueError) as err:
        raise UsageError(_first_line(err)) from None


def _builder_error(err: BaseException) -> str:
    text = _first_line(err)
    return text if isinstance(err, (ValueError, TypeError)) else f"{type(err).__name__}: {text}"
