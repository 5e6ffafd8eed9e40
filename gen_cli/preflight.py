"""Check a gen-train command line before Hydra starts, so that every bad override
gets one line that says what was wrong and what is allowed, not a stack trace."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import (InterpolationKeyError, OmegaConfBaseException,
                              UnsupportedInterpolationType)

from gen_cli.objective import objective_of
from gen_cli.schema import register_schemas
from genlr.engine import RunSpec, TrainerConfig, build_run

GROUPS = ("task", "model", "optimizer", "lr", "trainer", "workload", "experiment")
# Hydra's own flags: with these the command line is Hydra's business (help, info, shell).
HYDRA_FLAGS_WITH_VALUE = {"-cd", "--config-dir", "-p", "--package"}
HYDRA_ONLY_FLAGS = {"-h", "--help", "--hydra-help", "--version", "-c", "--cfg", "-i", "--info",
                    "-sc", "--shell-completion", "--resolve", "--experimental-rerun",
                    "-cp", "--config-path", "-cn", "--config-name"}


class UsageError(ValueError):
    """A bad command line; its message is one line."""


def overrides_of(argv: list[str]) -> list[str] | None:
    """The override arguments, or None when Hydra should handle the command line itself."""
    overrides, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg.split("=")[0] in HYDRA_ONLY_FLAGS:
            return None
        elif arg in HYDRA_FLAGS_WITH_VALUE:
            skip = True
        elif not arg.startswith("-"):
            overrides.append(arg)
    return overrides


def _first_line(err: BaseException) -> str:
    """Hydra and OmegaConf errors span several lines; keep the informative ones, joined."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    keep = [line for line in lines if not line.startswith(("full_key", "object_type",
                                                           "Set the environment", "To append",
                                                           "reference_type", "Config search",
                                                           "provider="))]
    return " ".join(keep[:2]) if keep else type(err).__name__


def _values(override) -> list[str]:
    """``key=value`` for each value an override takes (a sweep: each of its values)."""
    if not override.is_sweep_override():
        return [override.input_line]
    try:
        return [f"{override.get_key_element()}={v}" for v in override.sweep_string_iterator()]
    except Exception:  # glob sweeps and the like: Hydra expands and checks those itself
        return []


def combinations(overrides: list[str]) -> list[list[str]]:
    """Override lists that, between them, try every value of every sweep once (the others
    at their first value): linear in the sweep's size, not its product."""
    choices = [v for v in map(_values, OverridesParser.create().parse_overrides(overrides)) if v]
    base = [values[0] for values in choices]
    runs = [base]
    for i, values in enumerate(choices):
        runs += [[*base[:i], v, *base[i + 1:]] for v in values[1:]]
    return runs


def spec_from_config(cfg) -> RunSpec:
    """The engine's RunSpec from a composed config (TrainerConfig validates its values)."""
    c = OmegaConf.to_container(cfg, resolve=True)
    for group in ("task", "model", "optimizer", "lr", "trainer"):
        if not isinstance(c.get(group), dict) or (group != "trainer" and "name" not in c[group]):
            raise ValueError(f"the config has no {group} (choose one with {group}=<name>)")
    if not isinstance(c.get("seed"), int):
        raise ValueError("the config has no integer seed (set seed=<int>)")
    return RunSpec(task=c["task"], model=c["model"], optimizer=c["optimizer"], lr=c["lr"],
                   trainer=TrainerConfig(**c["trainer"]), seed=c["seed"])


def _check_groups(overrides: list[str]) -> None:
    loader = GlobalHydra.instance().config_loader()
    for override in OverridesParser.create().parse_overrides(overrides):
        group = override.key_or_group
        if group in GROUPS and group != "trainer" and not override.is_delete():
            value = override.value()
            allowed = loader.get_group_options(group)
            if value is None and group in ("workload", "experiment"):
                continue
            if value not in allowed:
                raise UsageError(f"unknown {group} {value!r}; choose one of: {', '.join(allowed)}")
    _check_size(loader, overrides)


def _check_size(loader, overrides: list[str]) -> None:
    """``size=`` picks a workload's size (conf/workload/sizes/<workload>_<size>.yaml)."""
    chosen = {o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(overrides)
              if o.key_or_group in ("workload", "size") and not o.is_delete()}
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


def check_command_line(argv: list[str]) -> None:
    """Raise UsageError (one line) if any run the command line asks for cannot start."""
    overrides = overrides_of(argv)
    if overrides is None:
        return
    register_schemas()
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        runs = combinations(overrides)
    except Exception as err:
        raise UsageError(f"cannot parse the overrides: {_first_line(err)}") from None
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="gen_cli.conf", version_base="1.3"):
            _check_groups(runs[0])
            config_multirun, out_dir = _hydra_settings(runs[0], "-m" in argv or "--multirun" in argv)
            multirun = "-m" in argv or "--multirun" in argv or config_multirun
            _check_writable(out_dir)
            sweeps = [o.input_line for o in parsed if o.is_sweep_override()]
            if sweeps and not multirun:
                raise UsageError(f"{sweeps[0]!r} sweeps over several values: add -m to run them all, "
                                 "or write a list as key=[a,b] or a string as key='a,b'")
            for run in runs:
                _check_groups(run)
                try:
                    cfg = compose(config_name="train", overrides=run)
                except Exception as err:
                    raise UsageError(_first_line(err)) from None
                try:
                    build_run(spec_from_config(cfg), torch.device("cpu"), load_data=False)
                    objective_of(cfg.objective, cfg.task.name)
                except (ValueError, TypeError, ImportError, OmegaConfBaseException) as err:
                    raise UsageError(_first_line(err)) from None
    finally:
        GlobalHydra.instance().clear()


def _hydra_settings(overrides: list[str], multirun: bool) -> tuple[bool, Path]:
    """Whether the config asks for a multirun (experiments may), and the output folder."""
    try:
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
        _check_references(cfg.hydra, "hydra.")
        config_multirun = OmegaConf.select(cfg, "hydra.mode") == RunMode.MULTIRUN
        key = "hydra.sweep.dir" if multirun or config_multirun else "hydra.run.dir"
        return config_multirun, Path(str(OmegaConf.select(cfg, key)))
    except UsageError:
        raise
    except Exception as err:
        raise UsageError(_first_line(err)) from None


def _check_references(node: DictConfig | ListConfig, prefix: str) -> None:
    """Hydra's own settings resolve only once the run starts; an interpolation to a key that
    does not exist, or to an unknown resolver, fails then with a traceback, so find it now.
    (Values Hydra fills in at run time, still ``???`` here, are left alone.)"""
    keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
    for key in keys:
        if f"{prefix}{key}" == "hydra.overrides":  # the command line's own text, not settings
            continue
        try:
            value = node[key]
        except (InterpolationKeyError, UnsupportedInterpolationType) as err:
            raise UsageError(f"{prefix}{key}: {_first_line(err)}") from None
        except OmegaConfBaseException:
            continue
        if isinstance(value, (DictConfig, ListConfig)):
            _check_references(value, f"{prefix}{key}.")


def _check_writable(out_dir: Path) -> None:
    """The run folder must be creatable: its nearest existing ancestor a writable folder."""
    existing = out_dir.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        problem = "is not a directory" if not existing.is_dir() else "is not writable"
        raise UsageError(f"cannot create the output folder {out_dir}: {existing} {problem} "
                         "(set hydra.run.dir / hydra.sweep.dir)")
