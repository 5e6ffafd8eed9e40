"""Check a gen-train command line before Hydra starts anything, so that every bad input
gets one line naming the key, the bad value and what is allowed: never a traceback, never
a run folder left behind.

Through Hydra's public API only: the command line's flags as Hydra documents them, and
every job a sweep would launch (each swept value once) composed with ``hydra.compose`` from
the configs ``@hydra.main`` would use (``--config-path``, ``--config-name``,
``--config-dir``). A composition error keeps Hydra's words where they are one clear line;
an unknown option or key is said again from the exception's own fields (the group's
options, the schema's fields). The checks come in two stages. The first needs no torch:
composition (names, keys, types), the values a signature judges
(``genlr.options.check_options``: choices, lengths, ranges), the trainer settings, Hydra's
own settings, the output folder (it can be made, no run is writing there, and it holds no
earlier run the command line neither resumes nor overwrites: ``genlr.rundir``). The second builds every job's components without data (what only the builders can
judge), finds or downloads the data, and reads the checkpoint a job resumes from.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
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

from gen_cli.objective import objective_of
from gen_cli.schema import GROUPS, Table, TrainSchema, option_table, schema_of
from genlr.messages import one_line
from genlr.options import check_options
from genlr.rundir import (CLI_OUTPUTS, ENGINE_OUTPUTS, SWEEP_OUTPUTS, clear_run, earlier_run,
                          earlier_sweep, run_folders)
from genlr.spec import RunSpec, TrainerConfig

# Where @hydra.main finds its configs (gen_cli/train.py) and its job's name.
CONFIG_PATH = "pkg://gen_cli.conf"
CONFIG_NAME = "train"
JOB_NAME = "train"
VERSION_BASE = "1.3"
TOP_LEVEL = tuple(field.name for field in dataclasses.fields(TrainSchema))
SEED_RANGE = (-(2**63), 2**64)  # what torch.manual_seed accepts
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


# ------------------------------------------------------------------ the command line
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


# ---------------------------------------------------------------------- the whole check
@dataclasses.dataclass
class Checked:
    """A command line that passed: what ``trainer.overwrite`` removes before Hydra writes
    (each folder with the names to remove there)."""

    clear: list[tuple[Path, tuple[str, ...]]] = dataclasses.field(default_factory=list)

    def start_over(self) -> None:
        if os.environ.get("RANK", "0") != "0":  # under torchrun the folder is rank 0's
            return
        for folder, names in self.clear:
            clear_run(folder, names)
            with contextlib.suppress(OSError):  # a job folder left empty goes too
                folder.rmdir()


def check_command_line(argv: list[str]) -> Checked | bool:
    """Raise UsageError (one line) if any job the command line asks for cannot start; False
    where it asks Hydra to show something instead (nothing checked), else what passed
    (``Checked``, true)."""
    args = read_command_line(argv)
    if args is None:
        return False
    parsed = parse_overrides(args.overrides)
    _check_deletions(parsed)
    _check_size(parsed)
    extra = _search_path(args.config_dir, parsed)
    given = {o.key_or_group for o in parsed}
    table = option_table()
    with app_configs(args.config_path):
        _check_group_lists(parsed)

        def job_config(overrides: list[str]) -> DictConfig:
            return _compose(args.config_path or CONFIG_PATH, args.config_name or CONFIG_NAME,
                            [*extra, *overrides], given)  # Hydra reads the first hydra.searchpath

        first_job = _first_values(parsed)
        first = job_config(first_job)
        multirun = args.multirun or OmegaConf.select(first, "hydra.mode") == RunMode.MULTIRUN
        _check_hydra_settings(first, multirun)
        run_dir = None if multirun else Path(str(OmegaConf.select(first, "hydra.run.dir")))
        sweep = (Path(str(OmegaConf.select(first, "hydra.sweep.dir"))),
                 str(OmegaConf.to_container(first.hydra.sweep)["subdir"])) if multirun else None
        configs = []
        for job in _jobs(parsed, first, multirun):
            cfg = first if job == first_job else job_config(job)  # (composed once)
            if multirun:
                _check_job_folder(cfg)
            with contextlib.suppress(Exception):  # what is checked below: the job's own keys
                OmegaConf.set_struct(cfg, False)
                cfg.pop("hydra", None)
            check_values(cfg, table)
            configs.append(cfg)
    clear = check_folders(configs, run_dir, sweep)
    seed_given = next((o.input_line for o in parsed if o.get_key_element() == "seed"), None)
    chosen = {o.key_or_group: o.input_line for o in parsed if o.key_or_group in GROUPS}
    check_buildable(configs, run_dir, seed_given, chosen)
    return Checked(clear)


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
    if isinstance(err, MissingConfigException) and err.missing_cfg_file and err.options:
        group, _, value = err.missing_cfg_file.rpartition("/")
        if group == "workload/sizes":  # conf/workload/sizes/<workload>_<size>.yaml
            workload = next((o.rsplit("_", 1)[0] for o in err.options
                             if value.startswith(o.rsplit("_", 1)[0] + "_")), value)
            sizes = [o.removeprefix(f"{workload}_") for o in err.options if o.startswith(f"{workload}_")]
            return (f"workload {workload} has no size {value.removeprefix(f'{workload}_')!r}; "
                    f"choose one of: {', '.join(sizes)}")
        return f"unknown {group} {value!r}; choose one of: {', '.join(err.options)}"
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
            return f"{key}: no such setting; choose one of: {', '.join(fields)}"
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
        try:  # user configs (--config-dir) may lack the schema: type-check them here
            given = OmegaConf.to_container(node, resolve=True)
            check_options(group, name, table[group][name], {k: v for k, v in given.items() if k != "name"})
            OmegaConf.merge(OmegaConf.structured(schema_of(group, name, table[group][name])), given)
        except OmegaConfBaseException as err:  # first: some are ValueErrors too
            key = err.full_key or ""
            key = key if key.startswith(f"{group}.") else f"{group}.{key}".rstrip(".")
            raise UsageError(f"{key}: {one_line(err)}") from None
        except ValueError as err:  # check_options' refusals, already one line
            raise UsageError(str(err)) from None
    seed = cfg.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise UsageError(f"seed={seed!r}: the seed must be an integer")
    if not SEED_RANGE[0] <= seed < SEED_RANGE[1]:
        raise UsageError(f"seed={seed}: out of range; choose an integer in [-2**63, 2**64)")
    if cfg.get("size") is not None and cfg.get("workload") is None:
        raise UsageError(f"size={cfg.size} sizes a workload: add workload=<name>")
    try:
        trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    except OmegaConfBaseException as err:
        raise UsageError(f"{err.full_key or 'trainer'}: {one_line(err)}") from None
    settings = [f.name for f in dataclasses.fields(TrainerConfig)]
    for key, value in trainer.items():
        if key not in settings:
            raise UsageError(f"trainer.{key}: no such setting; choose one of: {', '.join(settings)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"trainer.{key}={value}: not a finite number")
    try:
        TrainerConfig(**trainer)
    except (TypeError, ValueError) as err:
        raise UsageError(one_line(err)) from None


def check_folders(configs: list[DictConfig], run_dir: Path | None,
                  sweep: tuple[Path, str] | None) -> list[tuple[Path, tuple[str, ...]]]:
    """A run's folder is not in use and holds no earlier run that it neither continues
    (``trainer.resume``) nor overwrites (``trainer.overwrite``); a sweep's job folders
    (``sweep``: its folder and the subfolder's template) hold no earlier sweep's runs
    unless it continues them (``trainer.resume=auto``) or overwrites them. Return what
    ``trainer.overwrite`` removes (``Checked.clear``). (Under torchrun every process checks:
    rank 0 writes nothing of a run before the others joined its process group.)"""
    trainer = [cfg.trainer for cfg in configs]
    overwrite = any(t.overwrite for t in trainer)
    run_outputs = (*ENGINE_OUTPUTS, *CLI_OUTPUTS)
    if run_dir is not None:  # (whether the run may go there: genlr.engine.check_start)
        return [(run_dir, run_outputs)] if overwrite and earlier_run(run_dir) else []
    sweep_dir, subdir = sweep
    if all(str(t.resume).lower() in ("auto", "true", "yes", "1") for t in trainer):
        return []
    # the job folders' names: ${hydra.job.num} a number, any other interpolation a name
    pattern = re.compile("".join(
        r"\d+" if part == "${hydra.job.num}" else "[^/]+" if part.startswith("${")
        else re.escape(part) for part in re.split(r"(\$\{[^}]*\})", subdir)))
    jobs = [job for job in run_folders(sweep_dir, depth=len(Path(subdir).parts))
            if pattern.fullmatch(job.relative_to(sweep_dir).as_posix())]
    if jobs and not overwrite:
        raise UsageError(earlier_sweep(sweep_dir, jobs))
    # (the job folders go, so their lock files too: no run holds them, or it would be writing)
    return ([(job, (*run_outputs, ".lock")) for job in jobs]
            + ([(sweep_dir, SWEEP_OUTPUTS)] if jobs else []))


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


def _check_job_folder(cfg: DictConfig) -> None:
    """A sweep job's folder, ``hydra.sweep.dir/hydra.sweep.subdir``, where the subfolder
    is known before the job runs (``seed${seed}``; not ``${hydra.job.num}``)."""
    with contextlib.suppress(OmegaConfBaseException):
        subdir = OmegaConf.select(cfg, "hydra.sweep.subdir", throw_on_missing=True)
        check_writable(Path(str(cfg.hydra.sweep.dir)) / str(subdir), "hydra.sweep.subdir")


def check_writable(out_dir: Path, key: str) -> None:
    """The folder can be created: each folder name still to make is one the file system
    takes, and a scratch folder can be made in its nearest existing ancestor (permissions
    alone say nothing for root, nor about /proc)."""
    existing, missing = out_dir.absolute(), []
    while not os.path.exists(existing):  # False, not an error, for a name too long
        existing, missing = existing.parent, [existing.name, *missing]
    if not existing.is_dir():
        raise UsageError(f"{key}={out_dir}: {existing} is not a directory")
    try:
        longest = os.pathconf(existing, "PC_NAME_MAX")
    except (AttributeError, OSError, ValueError):  # Windows has no pathconf
        longest = 255
    too_long = next((name for name in missing if len(os.fsencode(name)) > longest), None)
    if too_long is not None:
        raise UsageError(f"{key}={out_dir}: the folder name {too_long[:20]}... is "
                         f"{len(os.fsencode(too_long))} bytes long; the file system takes at "
                         f"most {longest}")
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
                    seed_given: str | None = None, chosen: dict[str, str] | None = None) -> None:
    """What ``train`` would refuse before its first step (``genlr.engine.check_start``: the
    components, the device, the strategy, the checkpoint, the data), for every job; and a
    seed given on the command line changes something. ``chosen``: the groups the command
    line sets (``{"task": "task=mnist"}``), to say which of them a workload does not fit."""
    from genlr.engine import check_start

    for cfg in configs:
        spec = spec_from_config(cfg)
        try:
            objective_of(cfg.objective, spec.task["name"])
            run = check_start(spec, run_dir, "hydra.run.dir")
        except Exception as err:  # the library's refusals say it all; a crash needs its type
            line = one_line(err, with_type=not isinstance(err, (ValueError, TypeError, OSError)))
            raise UsageError(_workload_misfit(cfg, chosen or {}, line) or line) from None
        if seed_given and not run.task.depends_on_seed:
            raise UsageError(f"{seed_given}: task={spec.task['name']} does not depend on the seed "
                             "(a fixed start and no data); set task.start_noise > 0 to draw the "
                             "start from the seed")


def _workload_misfit(cfg: DictConfig, chosen: dict[str, str], refused: str) -> str | None:
    """``task=charlm does not fit workload=fmnist_cnn, which sets model=cnn: ...`` where a
    builder refused a component (``refused`` starts ``model=cnn:``) that the workload set
    and the command line left, while it changed another; None otherwise."""
    workload = cfg.get("workload")
    blamed = next((g for g in GROUPS if refused.startswith(f"{g}=")), None)
    changed = [line for group, line in chosen.items() if group in ("task", "model", "optimizer")
               and group != blamed]  # what a workload sets
    if workload is None or blamed is None or blamed in chosen or not changed:
        return None
    return f"{', '.join(changed)} does not fit workload={workload}, which sets {refused}"
