"""The jobs a gen-train command line asks for, composed as Hydra composes them, or one line
saying why a command line cannot be (``UsageError``).

Through Hydra's public API: the command line's flags as Hydra documents them, and every job
a sweep would launch (each swept value once) composed with ``hydra.compose`` from the
configs ``@hydra.main`` would use (``--config-path``, ``--config-name``, ``--config-dir``).
A composition error keeps Hydra's words where they are one clear line; an unknown option or
key is said again from the exception's own fields (the group's options, the schema's
fields).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
from typing import Iterator

from hydra import compose, initialize, initialize_config_dir, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import MissingConfigException
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import (ConfigAttributeError, ConfigKeyError, InterpolationKeyError,
                              OmegaConfBaseException, UnsupportedInterpolationType)

from gen_cli.schema import GROUPS, not_in_table, option_table
from genlr.messages import one_line
from genlr.options import check_options, refusal
from genlr.spec import RunSpec, TrainerConfig

# Where @hydra.main finds its configs (gen_cli/train.py) and its job's name.
CONFIG_PATH = "pkg://gen_cli.conf"
CONFIG_NAME = "train"
JOB_NAME = "train"
VERSION_BASE = "1.3"
# Hydra's command-line flags (https://hydra.cc/docs/advanced/hydra-command-line-flags/;
# tests/test_cli.py checks them against Hydra's own parser), each with its short form. These
# show something instead of running a job: Hydra answers them, nothing is checked.
SHOW_FLAGS = {"--help": "-h", "--hydra-help": None, "--version": None, "--cfg": "-c",
              "--resolve": None, "--package": "-p", "--info": "-i",
              "--shell-completion": "-sc", "--experimental-rerun": None}
# ... and these say which configs make the jobs, and whether they are a sweep.
RUN_FLAGS = {"--run": "-r", "--multirun": "-m", "--config-path": "-cp",
             "--config-name": "-cn", "--config-dir": "-cd"}


class UsageError(ValueError):
    """A bad command line; its message is one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print its usage and exit: two lines
        raise UsageError(f"{message} (see gen-train --help)")


def read_command_line(argv: list[str]) -> argparse.Namespace | None:
    """The flags and overrides, read as Hydra reads them; None where a flag asks Hydra to
    show something (--help, --cfg, ...) rather than to run."""
    parser = _Parser(prog="gen-train", add_help=False)
    parser.add_argument("overrides", nargs="*")
    for flag, short in SHOW_FLAGS.items():  # their values are Hydra's business
        parser.add_argument(flag, *filter(None, [short]), nargs="?", const=True)
    for flag, short in RUN_FLAGS.items():
        kind = {"action": "store_true"} if flag in ("--run", "--multirun") else {}
        parser.add_argument(flag, short, **kind)
    args, rest = parser.parse_known_args(argv)
    flags = [arg for arg in rest if arg.startswith("-")]
    if flags:
        raise UsageError(f"{flags[0]}: not a flag of gen-train (see gen-train --help)")
    if rest:  # Hydra's parser takes the overrides in one piece
        raise UsageError(f"{rest[0]}: give the overrides together, after the flags "
                         "(gen-train -m key=value ...)")
    if any(getattr(args, flag[2:].replace("-", "_")) is not None for flag in SHOW_FLAGS):
        return None
    if args.run and args.multirun:
        raise UsageError("--run and --multirun: give one of them (a sweep runs with -m)")
    if args.config_dir is not None and not os.path.isdir(args.config_dir):
        raise UsageError(f"--config-dir {args.config_dir}: no such folder")
    return args


@contextlib.contextmanager
def app_configs(config_path: str | None) -> Iterator[None]:
    """Hydra initialised with the configs ``@hydra.main`` in gen_cli/train.py reads: its
    ``config_path``, or the one --config-path gives (a relative path is relative to
    gen_cli/, as Hydra takes it relative to train.py)."""
    path = config_path or CONFIG_PATH
    GlobalHydra.instance().clear()  # a job run in this process before (tests) leaves it set
    if path.startswith("pkg://"):
        init = initialize_config_module(path.removeprefix("pkg://"), job_name=JOB_NAME,
                                        version_base=VERSION_BASE)
    elif os.path.isabs(path):
        init = initialize_config_dir(path, job_name=JOB_NAME, version_base=VERSION_BASE)
    else:
        init = initialize(config_path=path, job_name=JOB_NAME, version_base=VERSION_BASE)
    with init:
        yield


def parse_overrides(lines: list[str]) -> list[Override]:
    parser = OverridesParser.create()
    for line in lines:  # one at a time, to name the one that does not parse
        try:
            parser.parse_override(line)
        except Exception as err:
            raise UsageError(f"cannot parse {line!r}: {one_line(err)} (write "
                             "key=value; quote a value with special characters: "
                             "key='a value')") from None
    return parser.parse_overrides(lines)


@dataclasses.dataclass
class Jobs:
    """What a command line asks for: every job's config (Hydra's settings under ``hydra``;
    one job per swept value, the first job first) and the overrides as given."""

    configs: list[DictConfig]
    multirun: bool
    overrides: list[Override]

    def given(self, key: str) -> str | None:
        """The command line's ``key=value`` for ``key``, if it gives one."""
        return next((o.input_line for o in self.overrides if o.key_or_group == key), None)


def compose_jobs(argv: list[str]) -> Jobs | None:
    """The jobs the command line asks for (raises UsageError, one line, where one cannot be
    composed); None where it asks Hydra to show something instead (--help, --cfg, ...)."""
    args = read_command_line(argv)
    if args is None:
        return None
    parsed = parse_overrides(args.overrides)
    _check_deletions(parsed)
    _check_size(parsed)
    extra = _search_path(args.config_dir, parsed)
    given = {o.key_or_group for o in parsed}
    with app_configs(args.config_path):
        _check_group_lists(parsed)

        def job_config(overrides: list[str]) -> DictConfig:
            return _compose(args.config_path or CONFIG_PATH, args.config_name or CONFIG_NAME,
                            [*extra, *overrides], given)  # Hydra reads the first hydra.searchpath

        first_job = _first_values(parsed)
        first = job_config(first_job)
        multirun = args.multirun or OmegaConf.select(first, "hydra.mode") == RunMode.MULTIRUN
        configs = [first if job == first_job else job_config(job)  # (composed once)
                   for job in _jobs(parsed, first, multirun)]
    return Jobs(configs, multirun, parsed)


def _check_group_lists(parsed: list[Override]) -> None:
    """``lr=[constant,cosine]``: a config group takes one option (Hydra's own error, a merge
    error between two schemas, does not say so); a sweep is ``-m lr=constant,cosine``."""
    loader = GlobalHydra.instance().config_loader()
    for override in parsed:
        if override.is_delete() or override.is_sweep_override():
            continue
        group = override.key_or_group
        try:
            values, is_group = override.value(), bool(loader.get_group_options(group))
        except Exception:  # a value Hydra reads otherwise: its business
            continue
        if isinstance(values, list) and is_group:
            raise UsageError(f"{override.input_line}: {group} is a config group and takes one "
                             f"option; to run each as its own job, sweep: gen-train -m "
                             f"{group}={','.join(map(str, values))}")


def _check_deletions(parsed: list[Override]) -> None:
    """``~trainer.epochs``: gen-train's settings all have a value (a group may be removed,
    ``~experiment``, but not a setting of a schema)."""
    for override in parsed:
        key = override.key_or_group
        head, _, rest = key.partition(".")
        setting = rest and head in (*GROUPS, "trainer") or key in ("seed", "objective", "lr_range")
        if override.is_delete() and setting:
            raise UsageError(f"~{key}: a setting cannot be removed; give it a value instead "
                             f"({key}=...)")


def _check_size(parsed: list[Override]) -> None:
    """``size=`` picks the size of a workload (conf/workload/sizes/<workload>_<size>.yaml)."""
    chosen = {o.key_or_group for o in parsed if not o.is_delete()}
    if "size" in chosen and "workload" not in chosen:
        size = next(o.input_line for o in parsed if o.key_or_group == "size")
        raise UsageError(f"{size} sizes a workload: add workload=<name> (see gen-train --help)")


def _search_path(config_dir: str | None, parsed: list[Override]) -> list[str]:
    """--config-dir DIR as an override: Hydra puts DIR after the app's configs, where
    ``hydra.searchpath`` puts its folders (before those the command line gives there)."""
    if config_dir is None:
        return []
    given = next((o.value() for o in parsed if o.get_key_element() == "hydra.searchpath"), None)
    paths = [f"file://{os.path.abspath(config_dir)}", *(given or [])]
    quoted = ("'" + re.sub(r"(\\+)(?='|$)", r"\1\1", str(p)).replace("'", "\\'") + "'" for p in paths)
    return [f"hydra.searchpath=[{','.join(quoted)}]"]


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
        lines = [p for p, o in zip(params, parse_overrides(params)) if o.get_key_element() not in keys] + lines
    choices = [v for v in map(_values, parse_overrides(lines)) if v]
    base = [values[0] for values in choices]
    jobs = [base]
    for i, values in enumerate(choices):
        jobs += [[*base[:i], v, *base[i + 1:]] for v in values[1:]]
    return jobs


def _compose(config_path: str, config_name: str, overrides: list[str], given: set[str]) -> DictConfig:
    try:
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    except Exception as err:
        primary = f"--config-path {config_path} --config-name {config_name}"
        line = _describe(err, given, primary)
        raise UsageError(_option_misfit(err, config_name, overrides) or line) from None
    _check_references(cfg.hydra, "hydra.")
    return cfg


def _option_misfit(err: BaseException, config_name: str, overrides: list[str]) -> str | None:
    """``task=mnist does not fit workload=charlm_gpt: ...`` where the command line swapped a
    component (``task=mnist``) whose new schema lacks an option the workload sets for its
    own (``task.max_chars`` for task=charlm); None for any other error."""
    cause = err
    while cause is not None and not (isinstance(cause, (ConfigAttributeError, ConfigKeyError))
                                     and cause.full_key):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        return None
    key = cause.full_key
    group = key.split(".")[0]
    parsed = parse_overrides(overrides)
    swapped = [o.input_line for o in parsed if o.key_or_group == group and not o.is_delete()]
    given = {o.key_or_group for o in parsed}
    if group not in ("task", "model", "optimizer") or not swapped or key in given:
        return None
    try:  # the workload's own components: the command line's swaps left out
        own = compose(config_name=config_name, overrides=[
            o.input_line for o in parsed if o.key_or_group not in ("task", "model", "optimizer")])
    except Exception:
        return None
    if own.get("workload") is None:
        return None
    return (f"{swapped[-1]} does not fit workload={own.workload}: the workload sets {key} for "
            f"its {group}={own[group].name}, an option {swapped[-1]} does not have; drop "
            f"{swapped[-1]}, or drop workload= and choose the settings yourself")


def _describe(err: BaseException, given: set[str], primary: str) -> str:
    """One line for a composition error: the key or group, the value, what is allowed
    (``given``: the keys the command line sets, a config sets the others; ``primary``: the
    flags that chose the primary config)."""
    missing = err.missing_cfg_file if isinstance(err, MissingConfigException) else None
    if missing and missing.startswith("schema/"):  # conf/<group>/<name>.yaml's, not in the table
        return not_in_table(*missing.removeprefix("schema/").rsplit("/", 1))
    if isinstance(err, MissingConfigException) and err.missing_cfg_file and err.options:
        group, _, value = err.missing_cfg_file.rpartition("/")
        if group == "workload/sizes":  # conf/workload/sizes/<workload>_<size>.yaml
            workload = next((o.rsplit("_", 1)[0] for o in err.options
                             if value.startswith(o.rsplit("_", 1)[0] + "_")), value)
            sizes = [o.removeprefix(f"{workload}_") for o in err.options if o.startswith(f"{workload}_")]
            return refusal("size", sizes, value.removeprefix(f"{workload}_"))
        return refusal(group, err.options, value)
    if isinstance(err, MissingConfigException):  # the primary config, or its folder
        return f"{primary}: {one_line(err)}"
    chain = [err]
    while chain[-1].__cause__ or chain[-1].__context__:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    cause = next((e for e in chain if isinstance(e, OmegaConfBaseException) and e.full_key), None)
    if cause is not None:
        key = cause.full_key
        schema = cause.object_type
        if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and dataclasses.is_dataclass(schema):
            fields = {f.name: f.default for f in dataclasses.fields(schema)}
            group, _, leaf = key.rpartition(".")
            if group in GROUPS and "name" in fields:  # a component's schema: as the library says it
                try:
                    check_options(group, fields["name"], option_table()[group][fields["name"]], {leaf: None})
                except ValueError as refused:
                    return str(refused) + ("" if key in given else
                                           f" ({key} is set by a config, not the command line)")
            return refusal(key, fields)
        return f"{key}: {one_line(cause)}"
    if err.__cause__ is not None:
        return f"{one_line(err)}: {one_line(err.__cause__)}"
    return one_line(err)


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
            raise UsageError(f"{prefix}{key}: {one_line(err)}") from None
        except OmegaConfBaseException:
            continue
        if isinstance(value, (DictConfig, ListConfig)):
            _check_references(value, f"{prefix}{key}.")


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
