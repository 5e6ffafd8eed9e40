"""The README's gen-train and gen-report commands, and every ``experiment=``, run as written
(their budgets shrunk: fewer steps, sweep values and trials, never another output folder)
in a scratch working directory: each run lands where the README and the experiment's file
say, and gen-report finds it there. Slow: about twenty real gen-train processes."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_mnist_layout

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FASHION = Path("/usr/share/datasets/fashion-mnist")
WHEN = r"\d{4}-\d{2}-\d{2}/\d{2}-\d{2}-\d{2}"  # hydra's ${now:%Y-%m-%d}/${now:%H-%M-%S}
FEW = ["trainer.max_steps=2", "trainer.eval_every=2", "trainer.progress=false"]

# The README's commands, as written -> (what shrinks their budget: a key given there takes
# this value instead, the others are added; the folders their runs land in, as a pattern
# relative to the working directory; how many runs).
README_RUNS: dict[str, tuple[list[str], str, int]] = {
    "gen-train task=fashion_mnist model=cnn optimizer=adamw lr=cosine": (FEW, rf"outputs/{WHEN}", 1),
    "gen-train task=mnist lr=newt optimizer=adamw trainer.epochs=3":  # MNIST is not on disk
        ([*FEW, "task.data_root={data}", "trainer.batch_size=8"], rf"outputs/{WHEN}", 1),
    "gen-train -m lr=constant,cosine seed=0,1,2": (["seed=0", *FEW], rf"outputs/multirun/{WHEN}/\d+", 2),
    "gen-train lr=cosine trainer.amp=bf16 trainer.max_steps=200 hydra.run.dir=runs/cosine":
        (FEW, "runs/cosine", 1),
    "gen-train experiment=lr_sensitivity": (
        ["lr=constant,gen_parabola", "optimizer.lr=1e-3", "seed=0", *FEW],
        rf"outputs/experiments/lr_sensitivity/{WHEN}/\d+", 2),
    "gen-train workload=charlm_gpt lr=gen_exact":
        ([*FEW, "task.max_chars=20000", "trainer.batch_size=4"], rf"outputs/{WHEN}", 1),
    "gen-train workload=charlm_gpt size=gpu lr=gen_exact trainer.amp=bf16":
        ([*FEW, "task.max_chars=20000", "trainer.batch_size=4"], rf"outputs/{WHEN}", 1),
}
# gen-report commands -> how many runs they must find (those of the commands before them)
README_REPORTS = {"gen-report outputs/experiments/lr_sensitivity": 2}
# what a gen-suite folder is needed for (tests/test_suite_runner.py, tests/test_leaderboard.py)
SUITE_ONLY = {"gen-report outputs/suite --leaderboard", "gen-report outputs/sensitivity --sensitivity"}

# Every experiment: the command (its file's own), what shrinks it, where its jobs land.
EXPERIMENTS: dict[str, tuple[list[str], list[str], str, int]] = {
    "lr_sensitivity": ([], ["lr=constant,gen_parabola", "optimizer.lr=1e-3", "seed=0", *FEW],
                       rf"outputs/experiments/lr_sensitivity/{WHEN}/\d+", 2),
    "method_comparison_tune": ([], ["optimizer.lr=1e-3,1e-2", *FEW],
                               rf"outputs/experiments/method_comparison_tune/{WHEN}/\d+", 2),
    "method_comparison": ([], ["lr=constant,newt", "seed=0", *FEW],
                          rf"outputs/experiments/method_comparison/{WHEN}/methods/\d+", 2),
    "method_comparison_peers": ([], ["optimizer=prodigy,dog", "seed=0", *FEW],
                                rf"outputs/experiments/method_comparison/{WHEN}/peers/\d+", 2),
    "overhead": ([], ["optimizer=sgd", "lr=constant,newt", *FEW],
                 rf"outputs/experiments/overhead/{WHEN}/\d+", 2),
    "synthetic": ([], ["task=rosenbrock", "lr=constant,newt", "task.steps_per_epoch=5"],
                  rf"outputs/experiments/synthetic/{WHEN}/\d+", 2),
    "tune_lr": (["workload=fmnist_cnn", "lr=cosine"], ["hydra.sweeper.n_trials=2", *FEW],
                rf"outputs/experiments/tune_lr/{WHEN}/\d+", 2),
}


def readme_commands() -> tuple[list[str], dict[str, str]]:
    """The gen-train and gen-report lines of the README's bash blocks (comments cut), in
    order, and the ``$ gen-train ...`` examples of its text blocks with the line they show."""
    text = (REPO / "README.md").read_text()
    commands = [" ".join(shlex.split(line, comments=True))
                for block in re.findall(r"```bash\n(.*?)```", text, re.S)
                for line in block.splitlines() if line.startswith(("gen-train", "gen-report"))]
    shown = dict(re.findall(r"^\$ (gen-train .*)\n(gen-train: .*)$", text, re.M))
    return commands, shown


def shrunk(command: str, shrink: list[str], data: Path) -> list[str]:
    """``command``'s arguments, a key the shrink gives taking its value there."""
    args = shlex.split(command)[1:]
    shrink = [s.format(data=data) for s in shrink]
    keys = {s.split("=")[0]: s for s in shrink}
    kept = [keys.pop(a.split("=")[0], a) for a in args]
    return [*kept, *keys.values()]


def run(tool: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    # GENLR_TAYLOR_COMPILE=0: ExactGeN's Taylor pass interpreted, as in the default suite
    # (compiling a GPT's jet takes minutes here; test_taylor_*.py check the compiled one)
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "GENLR_TAYLOR_COMPILE": "0"}
    return subprocess.run([str(BIN / tool), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env=env)


def summaries(cwd: Path) -> set[str]:
    return {p.parent.relative_to(cwd).as_posix() for p in cwd.rglob("summary.json")}


def run_and_find(tool: str, args: list[str], cwd: Path, where: str, count: int) -> None:
    before = summaries(cwd)
    proc = run(tool, args, cwd)
    assert proc.returncode == 0, f"{tool} {shlex.join(args)}:\n{proc.stderr[-3000:]}"
    new = sorted(summaries(cwd) - before)
    assert len(new) == count and all(re.fullmatch(where, d) for d in new), (args, new, where)


def report_finds(folder: str, count: int, cwd: Path, extra: list[str] = ()) -> None:
    proc = run("gen-report", [folder, *extra], cwd)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"gen-report: {count} run(s), "), proc.stdout
    assert (cwd / folder / "report" / "report.md").is_file()


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_the_readmes_commands_run_as_written(tmp_path):
    commands, shown = readme_commands()
    assert set(commands) == README_RUNS.keys() | README_REPORTS.keys() | SUITE_ONLY, \
        "a README command changed: say here how to shrink it and where its runs land"
    assert shown, "the README's example of a refusal"
    write_mnist_layout(tmp_path / "data", "MNIST")
    for command in commands:
        if command in README_RUNS:
            shrink, where, count = README_RUNS[command]
            run_and_find("gen-train", shrunk(command, shrink, tmp_path / "data"), tmp_path, where, count)
        elif command in README_REPORTS:
            report_finds(shlex.split(command)[1], README_REPORTS[command], tmp_path)
    for command, line in shown.items():  # exactly what the README shows
        proc = run("gen-train", shlex.split(command)[1:], tmp_path)
        assert proc.returncode == 2 and proc.stderr.splitlines() == [line]


def folder_of(where: str) -> str:
    """``outputs/experiments/<folder>/...`` -> ``<folder>``."""
    return where.split("/")[2]


def test_every_experiment_is_run_here():
    names = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))
    assert names == sorted(EXPERIMENTS)


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
@pytest.mark.parametrize("folder", sorted({folder_of(e[2]) for e in EXPERIMENTS.values()}))
def test_every_experiment_lands_in_its_own_folder_and_reports(folder, tmp_path):
    """Issue 28: experiment=lr_sensitivity's jobs went to outputs/multirun/ (train.yaml's
    hydra.sweep.dir won over the experiment's), and gen-report found nothing where the
    README looks. Per folder (the methods' and the peers' comparisons share one)."""
    runs = 0
    for name, (given, shrink, where, count) in EXPERIMENTS.items():
        if folder_of(where) == folder:
            run_and_find("gen-train", [f"experiment={name}", *given, *shrink], tmp_path, where, count)
            runs += count
    if folder == "tune_lr":
        (tune,) = (tmp_path / "outputs/experiments/tune_lr").glob("*/*/optimization_results.yaml")
        assert "best_params" in tune.read_text()
    report_finds(f"outputs/experiments/{folder}", runs, tmp_path, ["--no-trajectories"])
