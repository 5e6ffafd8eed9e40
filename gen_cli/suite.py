"""gen-suite: run the workload suite and write one leaderboard across its workloads.

    gen-suite outputs/suite                  # every CPU workload, 3 seeds
    gen-suite outputs/suite --quick          # the whole protocol, tiny budgets (minutes)
    gen-suite outputs/suite --size gpu       # the GPU sizes (CIFAR-10 ResNet-18 included)

The protocol, per workload (conf/workload/): each tuned baseline (a constant and a cosine
lr) gets the same Optuna budget over its initial lr (``experiment=tune_lr``: 8 trials,
log-uniform over the workload's ``lr_range``, seed 0), then its best lr runs over the seeds;
every other row runs at its defaults over the same seeds: our lr methods (GeN parabola, GeN
exact, Newt) on the workload's optimizer from its default lr, the learning-rate-free peers,
and the authors' own GeN (``gen-optim``, ``optimizer=gen_optim_<base>``).

Resumable: a rerun skips what is finished, a tuning sweep with its
``optimization_results.yaml`` and a run whose ``summary.json`` says ``completed`` or
``diverged`` (a divergence is a result, and would recur); anything else goes on from its
checkpoint (``trainer.resume=auto``). A tuning sweep cut short replays: its seeded sampler
proposes the same lrs again, the finished trials answer from their checkpoints at once.
Layout: ``OUT/<workload>/tune/<baseline>/`` and ``OUT/<workload>/<row>/seed<k>/``, then
``gen-report OUT --leaderboard`` (``OUT/leaderboard/``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

FINISHED = ("completed", "diverged")
TUNED = ("constant", "cosine")
OURS = ("gen_parabola", "gen_exact", "newt")
# The learning-rate-free peers at their packages' defaults, by the workload's optimizer
# family; each row's overrides. Schedule-Free SGD gets its own momentum back where a
# workload sets plain SGD's (its momentum is the interpolation weight, 0.9 by default).
PEERS = {
    "adamw": {"prodigy": ["optimizer=prodigy"], "dadapt_adam": ["optimizer=dadapt_adam"],
              "schedulefree": ["optimizer=schedulefree_adamw"]},
    "sgd": {"dadapt_sgd": ["optimizer=dadapt_sgd"],
            "schedulefree": ["optimizer=schedulefree_sgd", "optimizer.momentum=0.9"]},
}
CPU_WORKLOADS = ("fmnist_cnn", "fmnist_mlp", "fmnist_linear", "charlm_gpt")
GPU_WORKLOADS = (*CPU_WORKLOADS, "cifar10_resnet18")
# --quick: the whole protocol at a toy budget, to check the machinery, not to compare.
QUICK_TRAINER = ["trainer.max_steps=30", "trainer.eval_every=15"]
QUICK_TRIALS = 2
QUICK_ROWS = ("cosine_tuned", "gen_parabola", "gen_optim", "prodigy", "dadapt_sgd")


@dataclass
class Row:
    name: str
    overrides: list[str]


def rows_for(family: str, best_lr: dict[str, float]) -> list[Row]:
    """The rows of a workload whose optimizer is ``family`` (adamw or sgd), the tuned
    baselines at their best lr."""
    rows = [Row(f"{b}_tuned", [f"lr={b}", f"optimizer.lr={best_lr[b]!r}"]) for b in TUNED
            if b in best_lr]
    rows += [Row(name, [f"lr={name}"]) for name in OURS]
    rows += [Row(name, [*overrides, "lr=constant"]) for name, overrides in PEERS[family].items()]
    rows.append(Row("gen_optim", [f"optimizer=gen_optim_{family}", "lr=constant"]))
    return rows


def status(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "summary.json").read_text())["status"]
    except (OSError, ValueError, KeyError):
        return None


class Suite:
    def __init__(self, out: Path, size: str, seeds: int, quick: bool) -> None:
        self.out, self.size, self.seeds, self.quick = out, size, seeds, quick
        self.logs = out / "logs"

    def gen_train(self, log: str, overrides: list[str]) -> int:
        """One gen-train process, its output into ``OUT/logs/<log>.log``."""
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{log}.log", "a", encoding="utf-8") as f:
            return subprocess.run([sys.executable, "-m", "gen_cli.train", *overrides],
                                  stdout=f, stderr=subprocess.STDOUT).returncode

    def base(self, workload: str) -> list[str]:
        base = [f"workload={workload}", f"size={self.size}", "trainer.progress=false",
                "trainer.resume=auto"]
        return base + (QUICK_TRAINER if self.quick else [])

    def tune(self, workload: str, baseline: str) -> float | None:
        """The best initial lr of ``baseline`` on ``workload`` (tuning it first if needed)."""
        import yaml

        sweep = self.out / workload / "tune" / baseline
        results = sweep / "optimization_results.yaml"
        if not results.is_file():
            trials = [f"hydra.sweeper.n_trials={QUICK_TRIALS}"] if self.quick else []
            self.gen_train(f"{workload}-tune-{baseline}",
                           [*self.base(workload), "experiment=tune_lr", f"lr={baseline}",
                            f"hydra.sweep.dir={sweep}", *trials])
        if not results.is_file():
            say(f"{workload}: tuning {baseline} failed (see {self.logs}); its row is left out")
            return None
        found = yaml.safe_load(results.read_text())
        say(f"{workload}: {baseline} tuned, best lr {found['best_params']['optimizer.lr']:.3g} "
            f"({found['best_value']:.4g})")
        return float(found["best_params"]["optimizer.lr"])

    def run_row(self, workload: str, row: Row) -> None:
        folder = self.out / workload / row.name
        todo = [s for s in range(self.seeds) if status(folder / f"seed{s}") not in FINISHED]
        if todo:
            self.gen_train(f"{workload}-{row.name}",
                           ["-m", *self.base(workload), *row.overrides,
                            f"seed={','.join(map(str, todo))}", f"hydra.sweep.dir={folder}",
                            "hydra.sweep.subdir=seed${seed}"])
        done = [status(folder / f"seed{s}") for s in range(self.seeds)]
        say(f"{workload}: {row.name}: " + ", ".join(f"seed{s} {st or 'not finished'}"
                                                     for s, st in enumerate(done))
            + ("" if todo else " (already there)"))

    def run(self, workload: str) -> None:
        family = optimizer_of(workload, self.size)
        if family not in PEERS:
            raise SystemExit(f"gen-suite: workload {workload} trains {family}; the suite "
                             f"knows the rows of {', '.join(PEERS)} workloads")
        best = {}
        for baseline in TUNED:
            if self.quick and f"{baseline}_tuned" not in QUICK_ROWS:
                continue
            lr = self.tune(workload, baseline)
            if lr is not None:
                best[baseline] = lr
        for row in rows_for(family, best):
            if not self.quick or row.name in QUICK_ROWS:
                self.run_row(workload, row)


def optimizer_of(workload: str, size: str) -> str:
    """The optimizer a workload trains with (its config, composed)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from gen_cli.schema import register_schemas

    register_schemas()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="gen_cli.conf", version_base="1.3"):
            return compose(config_name="train",
                           overrides=[f"workload={workload}", f"size={size}"]).optimizer.name
    finally:
        GlobalHydra.instance().clear()


def say(line: str) -> None:
    print(f"gen-suite: {line}", flush=True)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gen-suite", description=__doc__.splitlines()[0],
                                epilog=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", metavar="OUT", help="the suite's folder (created; reruns resume it)")
    p.add_argument("--size", choices=("cpu", "gpu"), default="cpu",
                   help="the workloads' size (default cpu; gpu adds cifar10_resnet18)")
    p.add_argument("--workloads", metavar="W[,W...]",
                   help="only these workloads (default: every workload of the size)")
    p.add_argument("--seeds", type=int, default=None,
                   help="seeds per row (default 3; 1 with --quick)")
    p.add_argument("--quick", action="store_true",
                   help=f"check the machinery in minutes: {' '.join(QUICK_TRAINER)}, "
                        f"{QUICK_TRIALS} tuning trials, rows {', '.join(QUICK_ROWS)}")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    known = GPU_WORKLOADS if args.size == "gpu" else CPU_WORKLOADS
    workloads = args.workloads.split(",") if args.workloads else list(known)
    unknown = [w for w in workloads if w not in known]
    if unknown:
        parser().error(f"--workloads: {', '.join(unknown)} is not a {args.size} workload "
                       f"(choose from {', '.join(known)})")
    seeds = args.seeds if args.seeds is not None else 1 if args.quick else 3
    if seeds < 1:
        parser().error(f"--seeds must be a positive integer, got {seeds}")
    out = Path(args.out)
    started = time.perf_counter()
    suite = Suite(out, args.size, seeds, args.quick)
    for workload in workloads:
        suite.run(workload)
    from genlr.messages import duration
    from genlr.report.leaderboard import write_leaderboard

    board = write_leaderboard(out, command=f"gen-report {out} --leaderboard")
    say(f"{len(board.entries)} row(s) on {len(board.workloads)} workload(s) -> "
        f"{board.files[0]} ({duration(time.perf_counter() - started)})")


if __name__ == "__main__":
    main()
