"""gen-report on a tiny sweep shaped like Hydra's (``<sweep>/<job>/.hydra/config.yaml``,
``summary.json``, ``tb/``), trained by the real engine on ``logreg``: table rows, CSV
values against hand-computed mean ± std, figures, statuses counted, clear errors."""

from __future__ import annotations

import csv
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from gen_cli.jobs import spec_from_config
from gen_cli.report import main as report_main
from gen_cli.schema import register_schemas
from genlr.engine import RunSpec, TrainerConfig, train
from genlr.report import NoRunsError, Target, load_runs, write_report
from genlr.options import flatten_config, unflatten_config
from genlr.report.groups import varying_keys
from genlr.report.runs import flatten
from genlr.report.trajectories import trace, trajectory_figure
from genlr.tracking import read_summary, write_summary

register_schemas()
GEN_REPORT = str(Path(sys.executable).with_name("gen-report"))
PNG = b"\x89PNG\r\n\x1a\n"
QUICK = ["task=logreg", "model=linear", "optimizer=sgd", "trainer.max_steps=4",
         "trainer.batch_size=64", "trainer.eval_every=2", "trainer.log_every=1",
         "trainer.progress=false", "trainer.plots=false", "trainer.device=cpu"]
# (job, overrides): two lr methods × two initial lrs, seeds; job 4 is relabelled diverged
# and job 7 never finishes (only .hydra/config.yaml).
JOBS = [
    (0, ["lr=constant", "optimizer.lr=0.1", "seed=0"]),
    (1, ["lr=constant", "optimizer.lr=0.1", "seed=1"]),
    (2, ["lr=cosine", "optimizer.lr=0.1", "seed=0"]),
    (3, ["lr=cosine", "optimizer.lr=0.1", "seed=1"]),
    (4, ["lr=cosine", "optimizer.lr=0.1", "seed=2"]),
    (5, ["lr=constant", "optimizer.lr=0.01", "seed=0"]),
    (6, ["lr=cosine", "optimizer.lr=0.01", "seed=0"]),
    (7, ["lr=constant", "optimizer.lr=0.01", "seed=1"]),
]


def _compose(overrides):
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="gen_cli.conf", version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sweep")
    task_overrides = ["lr=constant,cosine", "optimizer.lr=0.1,0.01", "seed=0,1,2,3"]
    OmegaConf.save(OmegaConf.create({"hydra": {"overrides": {"task": task_overrides}}}),
                   root / "multirun.yaml")
    for job, overrides in JOBS:
        run_dir = root / str(job)
        cfg = _compose([*QUICK, *overrides])
        (run_dir / ".hydra").mkdir(parents=True)
        OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
        OmegaConf.save(OmegaConf.create(overrides), run_dir / ".hydra" / "overrides.yaml")
        if job == 7:
            continue
        train(spec_from_config(cfg), run_dir)
    # A diverged run as the engine leaves it: status, message, no final metrics.
    summary = read_summary(root / "4")
    summary.update(status="diverged", message="training loss is nan at step 3",
                   final={"train_loss": None, "eval_loss": None, "eval_acc": None})
    write_summary(root / "4", summary)
    GlobalHydra.instance().clear()
    return root


@pytest.fixture(scope="module")
def report(sweep):
    return write_report(sweep, target="eval/acc=0.0", command="gen-report test")


def _rows(report) -> dict[str, dict[str, str]]:
    with open(report.out / "report.csv", newline="") as f:
        return {row["group"]: row for row in csv.DictReader(f)}


def test_groups_named_by_what_differs(report):
    names = {g.name for g in report.groups}
    assert names == {"lr=constant optimizer.lr=0.1", "lr=cosine optimizer.lr=0.1",
                     "lr=constant optimizer.lr=0.01", "lr=cosine optimizer.lr=0.01"}


def test_csv_mean_std_over_seeds(report, sweep):
    row = _rows(report)["lr=constant optimizer.lr=0.1"]
    accs = [read_summary(sweep / j)["final"]["eval_acc"] for j in ("0", "1")]
    losses = [read_summary(sweep / j)["final"]["eval_loss"] for j in ("0", "1")]
    assert float(row["final_eval_acc_mean"]) == pytest.approx(statistics.fmean(accs))
    assert float(row["final_eval_acc_std"]) == pytest.approx(statistics.stdev(accs))
    assert float(row["final_eval_loss_mean"]) == pytest.approx(statistics.fmean(losses))
    assert row["final_eval_acc_n"] == "2" and row["n_runs"] == "2"
    assert row["n_completed"] == "2" and row["optimizer.lr"] == "0.1"
    assert float(row["forward_per_step_mean"]) == pytest.approx(1.0)
    assert float(row["step_cost_ratio"]) == pytest.approx(1.0)
    assert row["run_dirs"] == "0;1"
    # Target 0.0 is reached at the first evaluation (step 2).
    assert row["n_reached_target"] == "2" and float(row["steps_to_target_mean"]) == 2.0


def test_diverged_counted_not_dropped(report, sweep):
    row = _rows(report)["lr=cosine optimizer.lr=0.1"]
    assert (row["n_runs"], row["n_completed"], row["n_diverged"]) == ("3", "2", "1")
    accs = [read_summary(sweep / j)["final"]["eval_acc"] for j in ("2", "3")]
    assert float(row["final_eval_acc_mean"]) == pytest.approx(statistics.fmean(accs))
    assert row["run_dirs"] == "2;3;4"
    assert row["step_cost_ratio"]  # relative to lr=constant at the same optimizer.lr


def test_incomplete_job_reported(report):
    row = _rows(report)["lr=constant optimizer.lr=0.01"]
    assert (row["n_runs"], row["n_completed"], row["n_incomplete"]) == ("2", "1", "1")
    assert report.expected_jobs == 16
    line = report.incomplete_line()
    assert "1 job(s) running" in line and "8 of 16 sweep job(s) not started" in line
    md = (report.out / "report.md").read_text()
    assert "running/incomplete" in md and "8 of 16" in md


def test_markdown_rows_and_figures(report):
    md = (report.out / "report.md").read_text()
    assert "Produced by `gen-report test`" in md
    for group in report.groups:
        assert f"| {group.name} |" in md
    assert "| lr=cosine optimizer.lr=0.1 | 2/3 completed, 1 diverged |" in md
    assert "## Best setting per method" in md
    for name in ("loss_vs_step", "loss_vs_time", "accuracy_vs_step", "accuracy_vs_time",
                 "lr_vs_step", "lr_sensitivity"):
        path = report.out / f"{name}.png"
        assert path.read_bytes()[:8] == PNG, name
        assert f"]({name}.png)" in md


def test_best_per_method(report, sweep):
    """Per (optimizer, lr method), its groups ranked by mean final accuracy, the best first,
    except that a group with a diverged run ranks after every group without one."""
    def acc(*jobs):
        return statistics.fmean(read_summary(sweep / j)["final"]["eval_acc"] for j in jobs)

    ranked = {best.method: [g.name for g in groups] for best, groups in report.best}
    assert all(best.name == ranked[best.method][0] for best, _ in report.best)
    constant = {"lr=constant optimizer.lr=0.1": acc("0", "1"),
                "lr=constant optimizer.lr=0.01": acc("5")}  # job 7 never finished
    assert ranked[("sgd", "constant")] == sorted(constant, key=constant.get, reverse=True)
    # lr=cosine at 0.1 has the better accuracy over its completed runs: the diverged one
    # (job 4), not the accuracy, puts it last
    assert acc("2", "3") > acc("6")
    assert ranked[("sgd", "cosine")] == ["lr=cosine optimizer.lr=0.01", "lr=cosine optimizer.lr=0.1"]
    assert set(ranked) == {("sgd", "constant"), ("sgd", "cosine")}


def test_cli_in_process(sweep, tmp_path, capsys):
    report_main([str(sweep), "--out", str(tmp_path / "r"), "--target", "eval/acc=2"])
    out = capsys.readouterr().out
    assert "8 run(s), 4 group(s)" in out and "not started" in out
    rows = _rows(type("R", (), {"out": tmp_path / "r"}))
    assert all(row["n_reached_target"] == "0" for row in rows.values())


@pytest.mark.parametrize("kind", ["missing", "file", "empty"])
def test_errors_are_one_line(kind, tmp_path, capsys):
    path = {"missing": tmp_path / "nope", "file": tmp_path / "f.txt", "empty": tmp_path / "d"}[kind]
    if kind == "file":
        path.write_text("x")
    if kind == "empty":
        (path / "sub").mkdir(parents=True)
    with pytest.raises(SystemExit) as exit_info:
        report_main([str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"gen-report: no runs under {path}")
    with pytest.raises(NoRunsError):
        load_runs(path)


def test_bad_options_are_one_line(sweep, capsys):
    for argv in ([str(sweep), "--target", "acc"], [str(sweep), "--best-by", "nope"]):
        with pytest.raises(SystemExit) as exit_info:
            report_main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("gen-report: ")


def test_console_script_error(tmp_path):
    result = subprocess.run([GEN_REPORT, str(tmp_path)], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 2
    assert result.stderr == (f"gen-report: no runs under {tmp_path} "
                             "(looked for summary.json / .hydra/config.yaml)\n")


def test_run_without_hydra_falls_back_to_summary(tmp_path):
    spec = spec_from_config(_compose([*QUICK, "lr=constant"]))
    train(spec, tmp_path / "plain")
    report = write_report(tmp_path / "plain", command="x", trajectories=False)
    assert [g.name for g in report.groups] == ["task=logreg model=linear optimizer=sgd lr=constant"]
    assert report.groups[0].counts["completed"] == 1


def test_target_parsing():
    assert str(Target.parse("eval/acc=0.85")) == "eval/acc>=0.85"
    assert str(Target.parse("eval/loss=0.3")) == "eval/loss<=0.3"
    assert Target.parse("acc=0.5").tag == "eval/acc"
    with pytest.raises(ValueError):
        Target.parse("eval/acc")


def test_method_options_do_not_name_groups():
    configs = [{"lr.name": "gen_exact", "lr.every": 4, "optimizer.lr": 0.1},
               {"lr.name": "gen_parabola", "lr.every": 8, "optimizer.lr": 0.1}]
    assert varying_keys(configs) == ["lr.name"]
    configs.append({"lr.name": "gen_parabola", "lr.every": 2, "optimizer.lr": 0.1})
    assert varying_keys(configs) == ["lr.name", "lr.every"]


@pytest.mark.parametrize("lr", [{"name": "gen_parabola", "every": 1}, {"name": "newt"}])
def test_a_traced_path_is_the_run_gen_train_makes(lr, tmp_path):
    """trace() trains through the engine's own steps (probe batches and deferred probes
    included): its last point is the parameters the engine's run ends with."""
    optimizer = {"name": "sgd", "lr": 1e-3, "momentum": 0.0}
    path = trace({"name": "rosenbrock"}, optimizer, lr, steps=12)
    assert path.status == "completed" and len(path.points) == 13
    spec = RunSpec(task={"name": "rosenbrock", "steps_per_epoch": 12}, model={"name": "coords"},
                   optimizer=optimizer, lr=lr, trainer=TrainerConfig(
                       device="cpu", max_steps=12, progress=False, plots=False))
    train(spec, tmp_path)
    (theta,) = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)["model"].values()
    assert path.points[-1] == pytest.approx(tuple(theta.double().tolist()), rel=1e-12, abs=0)


def test_a_run_config_flattens_to_the_reports_keys_and_back():
    config = {"task": {"name": "rosenbrock", "steps_per_epoch": 7}, "seed": 2,
              "lr": {"name": "gen_parabola", "points": [-1.0, 0.0, 1.0], "lr_max": None}}
    flat = flatten(config)
    assert flat == {"task.name": "rosenbrock", "task.steps_per_epoch": 7, "seed": 2,
                    "lr.name": "gen_parabola", "lr.points": (-1.0, 0.0, 1.0), "lr.lr_max": None}
    assert unflatten_config(flatten_config(config)) == config


def test_trajectory_figure(tmp_path):
    path = trace({"name": "rosenbrock"}, {"name": "sgd", "lr": 1e-3, "momentum": 0.0},
                 {"name": "constant"}, steps=20, label="GD")
    assert path.status == "completed" and len(path.points) == 21
    assert path.points[0] == pytest.approx((-1.2, 1.0))
    assert path.gaps[-1] < path.gaps[0]
    broken = trace({"name": "rosenbrock"}, {"name": "sgd", "lr": 1.0}, {"name": "constant"},
                   steps=20, label="too big")
    assert broken.status == "diverged"
    out = trajectory_figure("rosenbrock", [path, broken], tmp_path / "r.png")
    assert out.read_bytes()[:8] == PNG
