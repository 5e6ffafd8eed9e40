"""Check a gen-train command line before Hydra starts anything, so that every bad input
gets one line naming the key, the bad value and what is allowed: never a traceback, never
a run folder left behind.

The jobs come composed as Hydra would compose them (``gen_cli.jobs``). The checks come in
two stages. The first needs no torch: the values a signature judges
(``genlr.options.check_options``: choices, lengths, ranges), the trainer settings, Hydra's
own settings, the output folders (they can be made, and a sweep's hold no earlier sweep it
neither continues nor overwrites: ``genlr.rundir``). The second is the library's own
start-up check for every job (``genlr.engine.check_start``: the components, the folder, the
checkpoint, the data), as ``train`` makes it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gen_cli.jobs import Jobs, UsageError, compose_jobs, spec_from_config
from gen_cli.objective import objective_of
from gen_cli.schema import GROUPS, Table, TrainSchema, option_table, schema_of
from genlr.messages import one_line
from genlr.options import check_options, options_of, refusal
from genlr.rundir import (CLI_OUTPUTS, ENGINE_OUTPUTS, SWEEP_OUTPUTS, check_writable, clear_run,
                          earlier_run, earlier_sweep, run_folders)
from genlr.spec import TrainerConfig

TOP_LEVEL = tuple(field.name for field in dataclasses.fields(TrainSchema))
SEED_RANGE = (-(2**63), 2**64)  # what torch.manual_seed accepts


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
    jobs = compose_jobs(argv)
    if jobs is None:
        return False
    first, multirun = jobs.configs[0], jobs.multirun
    _check_hydra_settings(first, multirun)
    run_dir = None if multirun else Path(str(OmegaConf.select(first, "hydra.run.dir")))
    sweep = (Path(str(OmegaConf.select(first, "hydra.sweep.dir"))),
             str(OmegaConf.to_container(first.hydra.sweep)["subdir"])) if multirun else None
    table = option_table()
    configs = []
    for cfg in jobs.configs:
        if multirun:
            _check_job_folder(cfg)
        with contextlib.suppress(Exception):  # what is checked below: the job's own keys
            OmegaConf.set_struct(cfg, False)
            cfg.pop("hydra", None)
        check_values(cfg, table)
        configs.append(cfg)
    clear = check_folders(configs, run_dir, sweep)
    check_buildable(configs, run_dir, jobs)
    return Checked(clear)


def check_values(cfg: DictConfig, table: Table) -> None:
    """What the config's own structure and the signatures can judge, without torch:
    every key known, every value of its type, within its choices, of its length, finite."""
    unknown = [key for key in cfg.keys() if key not in TOP_LEVEL]
    if unknown:
        raise UsageError(refusal(unknown[0], TOP_LEVEL))
    for group in GROUPS:
        node = cfg.get(group)
        if not isinstance(node, DictConfig) or "name" not in node:
            raise UsageError(f"the config has no {group} (choose one with {group}=<name>)")
        name = node.name
        if name not in table[group]:
            raise UsageError(refusal(f"{group}.name", table[group], name))
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
    try:  # check_options first: to TrainerConfig, an unknown key is a TypeError
        check_options("trainer", None, options_of(TrainerConfig), trainer)
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
    _check_writable(Path(out_dir), key)
    launcher = str(OmegaConf.select(cfg, "hydra.launcher._target_") or "")
    if launcher.endswith("SlurmLauncher") and shutil.which("sbatch") is None:
        raise UsageError("hydra/launcher=slurm: SLURM's sbatch is not on PATH (run from a SLURM "
                         "login node, or use hydra/launcher=submitit_local or joblib)")


def _check_job_folder(cfg: DictConfig) -> None:
    """A sweep job's folder, ``hydra.sweep.dir/hydra.sweep.subdir``, where the subfolder
    is known before the job runs (``seed${seed}``; not ``${hydra.job.num}``)."""
    with contextlib.suppress(OmegaConfBaseException):
        subdir = OmegaConf.select(cfg, "hydra.sweep.subdir", throw_on_missing=True)
        _check_writable(Path(str(cfg.hydra.sweep.dir)) / str(subdir), "hydra.sweep.subdir")


def _check_writable(out_dir: Path, key: str) -> None:
    try:
        check_writable(out_dir, key)
    except ValueError as err:
        raise UsageError(str(err)) from None


def check_buildable(configs: list[DictConfig], run_dir: Path | None, jobs: Jobs) -> None:
    """What ``train`` would refuse before its first step (``genlr.engine.check_start``: the
    components, the device, the strategy, the checkpoint, the data), for every job; and a
    seed given on the command line changes something."""
    from genlr.engine import check_start

    seed_given = jobs.given("seed")
    chosen = {group: jobs.given(group) for group in GROUPS if jobs.given(group)}
    for cfg in configs:
        spec = spec_from_config(cfg)
        try:
            objective_of(cfg.objective, spec.task["name"])
            run = check_start(spec, run_dir, "hydra.run.dir")
        except Exception as err:  # the library's refusals say it all; a crash needs its type
            line = one_line(err, with_type=not isinstance(err, (ValueError, TypeError, OSError)))
            raise UsageError(_workload_misfit(cfg, chosen, line) or line) from None
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
