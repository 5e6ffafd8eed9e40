"""gen-train: train one run, or a sweep with ``-m``, from the Hydra configs in ``conf/``.

    gen-train task=fashion_mnist model=cnn optimizer=adamw lr=cosine
    gen-train -m lr=constant,cosine seed=0,1,2
"""

from __future__ import annotations

import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from gen_cli.objective import objective_value
from gen_cli.preflight import UsageError, check_command_line, spec_from_config
from gen_cli.schema import register_schemas
from genlr.engine import train

register_schemas()
FAILED_RUNS: list[str] = []  # jobs of this process that did not complete (sweeps go on)


@hydra.main(version_base="1.3", config_path="pkg://gen_cli.conf", config_name="train")
def run(cfg: DictConfig) -> float | None:
    """Train one job; return its objective for a sweeper (gen_cli/objective.py)."""
    run_dir = HydraConfig.get().runtime.output_dir
    try:
        summary = train(spec_from_config(cfg), run_dir,
                        hparams=OmegaConf.to_container(cfg, resolve=True))
    except (ValueError, TypeError, ImportError, FileNotFoundError, RuntimeError) as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"gen-train: {err}", file=sys.stderr)
        FAILED_RUNS.append(run_dir)
        return None
    final = summary["final"]
    line = (f"gen-train: {summary['status']} {summary['steps']} steps in "
            f"{summary['wall_time_s']:.1f}s; eval_loss {final.get('eval_loss')}, "
            f"eval_acc {final.get('eval_acc')} -> {run_dir}")
    if summary["status"] != "completed":
        line += f" ({summary.get('message', '')})"
        FAILED_RUNS.append(run_dir)
    print(line, file=sys.stderr if summary["status"] != "completed" else sys.stdout)
    return objective_value(cfg.objective, cfg.task.name, summary)


def main() -> None:
    FAILED_RUNS.clear()
    try:
        check_command_line(sys.argv[1:])
    except UsageError as err:
        print(f"gen-train: {err}", file=sys.stderr)
        sys.exit(2)
    run()
    sys.exit(1 if FAILED_RUNS else 0)


if __name__ == "__main__":
    main()
