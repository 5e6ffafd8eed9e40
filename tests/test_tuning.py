"""Equal tuning budgets through Hydra's Optuna sweeper: the objective gen-train returns
(selectable, with the right direction, the worst value for a run that did not complete),
and a real `experiment=tune_lr` sweep on a task without accuracy."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from gen_cli.objective import direction, objective_of, objective_value
from gen_cli.jobs import UsageError
from gen_cli.preflight import check_command_line
from gen_cli.schema import register_schemas

GEN_TRAIN = str(Path(sys.executable).with_name("gen-train"))
pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
register_schemas()


def test_objective_defaults_to_the_tasks_own_metric():
    assert objective_of(None, "fashion_mnist") == "eval_acc"
    assert objective_of(None, "quadratic") == "eval_loss"
    assert objective_of("train_loss", "fashion_mnist") == "train_loss"
    assert direction(None, "fashion_mnist") == "maximize"
    assert direction(None, "quadratic") == direction("eval_loss", "mnist") == "minimize"


def test_objective_value_is_the_final_metric_or_the_worst():
    summary = {"status": "completed", "final": {"eval_acc": 0.8, "eval_loss": 0.5, "train_loss": 0.4}}
    assert objective_value(None, "mnist", summary) == 0.8
    assert objective_value("eval_loss", "mnist", summary) == 0.5
    diverged = {**summary, "status": "diverged"}  # its last eval is before the divergence
    assert objective_value(None, "mnist", diverged) == 0.0
    assert objective_value("eval_loss", "mnist", diverged) == math.inf
    assert objective_value(None, "quadratic", {"status": "completed", "final": {"eval_loss": None}}) == math.inf


@pytest.mark.parametrize("args, expected", [
    (["task=quadratic", "objective=eval_acc"],
     "objective=eval_acc but task quadratic reports no accuracy; use objective=eval_loss or train_loss"),
    (["objective=accuracy"], "objective='accuracy': choose one of: eval_acc, eval_loss, train_loss"),
])
def test_bad_objectives_get_one_line_before_anything_runs(args, expected):
    with pytest.raises(UsageError) as err:
        check_command_line(args)
    assert str(err.value) == expected


@pytest.mark.parametrize("overrides, expected", [
    (["workload=fmnist_cnn"], "maximize"),
    (["task=quadratic"], "minimize"),
    (["workload=fmnist_cnn", "objective=eval_loss"], "minimize"),
])
def test_the_sweeper_direction_follows_the_objective(overrides, expected):
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="gen_cli.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=tune_lr", *overrides],
                      return_hydra_config=True)
    GlobalHydra.instance().clear()
    sweeper = cfg.hydra.sweeper
    assert sweeper.direction == expected
    assert sweeper.params["optimizer.lr"] == (
        f"tag(log, interval({cfg.lr_range[0]}, {cfg.lr_range[1]}))")


@pytest.mark.slow
def test_optuna_sweep_on_a_task_without_accuracy(tmp_path):
    """Four trials on the quadratic: Optuna minimises the final eval loss; the trial whose lr
    makes SGD diverge is scored infinite, and the sweep still ends with the best lr."""
    sweep = tmp_path / "tune"
    proc = subprocess.run(
        [GEN_TRAIN, "experiment=tune_lr", "task=quadratic", "optimizer=sgd", "lr=constant",
         "trainer.max_steps=60", "hydra.sweeper.n_trials=4", "lr_range=[1e-4,1]",
         f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONWARNINGS": "ignore"})
    assert "Traceback" not in proc.stderr, proc.stderr
    trials = {}
    for job in sorted(p for p in sweep.iterdir() if p.is_dir()):
        summary = json.loads((job / "summary.json").read_text())
        lr = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())["optimizer"]["lr"]
        trials[lr] = summary
    assert len(trials) == 4
    statuses = sorted(s["status"] for s in trials.values())
    assert statuses == ["completed", "completed", "completed", "diverged"], statuses
    assert proc.returncode == 1  # a job diverged: gen-train says so in its exit status
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    completed = {lr: s["final"]["eval_loss"] for lr, s in trials.items() if s["status"] == "completed"}
    best_lr = min(completed, key=completed.get)
    assert results["best_params"] == {"optimizer.lr": pytest.approx(best_lr)}
    assert results["best_value"] == pytest.approx(completed[best_lr])
    assert all(1e-4 <= lr <= 1 for lr in trials)


@pytest.mark.slow
def test_a_sweep_cut_short_replays_and_goes_on(tmp_path):
    """A rerun with ``trainer.resume=auto`` (what gen-suite passes): the seeded sampler
    proposes the same lrs, the finished trials answer from their checkpoints, so a sweep cut
    after two trials and rerun for four ends as one run straight through (the last two
    trials chosen by TPE from the replayed values)."""
    def sweep(folder: Path, trials: int) -> dict:
        proc = subprocess.run(
            [GEN_TRAIN, "experiment=tune_lr", "task=quadratic", "optimizer=sgd", "lr=constant",
             "trainer.max_steps=30", f"hydra.sweeper.n_trials={trials}", "lr_range=[1e-3,0.5]",
             "hydra.sweeper.sampler.n_startup_trials=2", "trainer.resume=auto",
             f"hydra.sweep.dir={folder}"],
            cwd=tmp_path, capture_output=True, text=True, timeout=300,
            env={**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONWARNINGS": "ignore"})
        # 1: a trial diverged (and diverges again on the replay)
        assert proc.returncode in (0, 1) and "Traceback" not in proc.stderr, proc.stderr
        return yaml.safe_load((folder / "optimization_results.yaml").read_text())

    straight = sweep(tmp_path / "straight", 4)
    sweep(tmp_path / "cut", 2)
    first = json.loads((tmp_path / "cut" / "0" / "summary.json").read_text())
    resumed = sweep(tmp_path / "cut", 4)
    assert resumed == straight
    for trial in range(4):
        a, b = (json.loads((tmp_path / d / str(trial) / "summary.json").read_text())
                for d in ("straight", "cut"))
        assert a["final"] == b["final"], trial
    assert json.loads((tmp_path / "cut" / "0" / "summary.json").read_text())["wall_time_s"] \
        >= first["wall_time_s"]  # the first attempt's run kept, its time carried on
