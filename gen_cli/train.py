"""gen-train: train one run, or a sweep with ``-m``, from the Hydra configs in ``conf/``.

    gen-train task=fashion_mnist model=cnn optimizer=adamw lr=cosine
    gen-train -m lr=constant,cosine seed=0,1,2

The command line is checked before Hydra starts (``gen_cli.preflight``); a job logs
through Hydra's job logging (``conf/hydra/job_logging/gen_train.yaml``): progress and the
last line to stdout, warnings and errors to stderr, all of it into ``<run dir>/train.log``.
The exit status: 2 for a refused command line, 1 if a job of this process did not
complete (a sweep goes on to its other jobs), else 0.
"""

from __future__ import annotations

import logging
import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from gen_cli.help import register_resolvers
from gen_cli.objective import objective_value
from gen_cli.jobs import CONFIG_NAME, CONFIG_PATH, VERSION_BASE, UsageError, spec_from_config
from gen_cli.preflight import check_command_line
from gen_cli.schema import register_schemas
from genlr.messages import one_line

log = logging.getLogger("gen_cli.train")


class BelowWarning(logging.Filter):
    """Lets records below WARNING through: the console's stdout half (warnings go to stderr)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING


def rank_tag() -> str:
    """``[rank 1] `` in a process torchrun started with others, else nothing."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    return f"[rank {os.environ.get('RANK', '0')}] " if world > 1 else ""


class RankFilter(logging.Filter):
    """Under torchrun every process runs the job and logs it: rank 0 alone says how training
    goes (every rank trains the same steps), while every rank's warnings and errors get
    through, tagged with its rank (``%(rank_tag)s`` in the formats), as Lightning does."""

    def filter(self, record: logging.LogRecord) -> bool:
        warns = record.levelno >= logging.WARNING
        record.rank_tag = rank_tag() if warns else ""
        return warns or os.environ.get("RANK", "0") == "0"


def train_job(cfg: DictConfig, failed: list[str]) -> float | None:
    """Train one job; return its objective for a sweeper (gen_cli/objective.py). A job that
    does not complete adds its folder to ``failed``."""
    from genlr.engine import resolve_device, train  # here: --help and a refusal need no torch

    run_dir = HydraConfig.get().runtime.output_dir
    try:
        if cfg.get("size") == "gpu" and resolve_device(cfg.trainer.device).type == "cpu":
            budget = (f"trainer.max_steps={cfg.trainer.max_steps}" if cfg.trainer.max_steps
                      is not None else f"trainer.epochs={cfg.trainer.epochs}")
            why = "trainer.device=cpu" if cfg.trainer.device == "cpu" else "no CUDA device"
            log.warning("size=gpu runs on the CPU here (%s): workload %s at its GPU size (%s) is "
                        "meant for a GPU and takes far longer than at size=cpu", why,
                        cfg.workload, budget)
        summary = train(spec_from_config(cfg), run_dir,
                        hparams=OmegaConf.to_container(cfg, resolve=True))
    except (ValueError, TypeError, ImportError, OSError, RuntimeError) as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        log.error("%s", one_line(err))
        failed.append(run_dir)
        return None
    if summary["status"] != "completed":  # the engine logged its last line
        failed.append(run_dir)
    return objective_value(cfg.objective, cfg.task.name, summary)


def main() -> None:
    register_schemas()
    try:
        runs = check_command_line(sys.argv[1:])
    except UsageError as err:
        print(f"gen-train: {rank_tag()}{err}", file=sys.stderr)
        sys.exit(2)
    if not runs:  # Hydra shows something: --help's lists come from these resolvers (only
        register_resolvers()  # then: OmegaConf calls them in every composition, seconds each)
    else:
        runs.start_over()  # trainer.overwrite: the earlier run's outputs go before Hydra writes
    failed: list[str] = []  # the jobs run in this process (a launcher's own processes: theirs)
    hydra.main(version_base=VERSION_BASE, config_path=CONFIG_PATH, config_name=CONFIG_NAME)(
        lambda cfg: train_job(cfg, failed))()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
