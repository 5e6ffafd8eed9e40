"""The leaderboard across workloads (``gen-report DIR --leaderboard``) on a fake suite folder
whose numbers are chosen so that every cell can be worked out by hand: final metric mean ±
std, targets, steps and time to target (medians, never-reached as infinite), failures,
cost against the base optimizer, ranks, the performance profile, the tuning budget."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import yaml
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.record_writer import RecordWriter

from gen_cli.report import main as report_main
from genlr.report.leaderboard import build_leaderboard, performance_profile, write_leaderboard
from genlr.report.runs import NoRunsError

LN2 = math.log(2)
# workload -> row -> [(status, final metric, [(step, seconds, value), ...])], one per seed
SUITE = {
    "wa": {"objective": "eval_acc", "rows": {
        "A": ("adamw", "constant", 10.0, [("completed", 0.905, [(10, 1, 0.85), (20, 2, 0.905)]),
                                          ("completed", 0.92, [(10, 1, 0.85), (20, 2, 0.92)])]),
        "B": ("adamw", "gen_parabola", 12.0, [("completed", 0.88, [(10, 3, 0.80), (20, 6, 0.88)]),
                                              ("completed", 0.88, [(10, 3, 0.80), (20, 6, 0.88)])]),
    }},
    "wb": {"objective": "eval_loss", "rows": {
        "A": ("adamw", "constant", 20.0, [("completed", 0.905, [(10, 1, 1.5), (20, 4, 0.905)]),
                                          ("completed", 0.906, [(10, 1, 1.5), (20, 4, 0.906)]),
                                          ("completed", 0.95, [(10, 1, 1.5), (20, 4, 0.95)])]),
        "B": ("adamw", "gen_parabola", 30.0, [("completed", 0.9, [(10, 0.5, 0.95), (20, 1, 0.9)]),
                                              ("completed", 0.9, [(10, 0.5, 0.95), (20, 1, 0.9)])]),
        "C": ("prodigy", "constant", 25.0, [("diverged", None, [(10, 1, 2.0)]),
                                            ("diverged", None, [(10, 1, 2.5)])]),
    }},
}


def write_events(folder: Path, points: list[tuple[int, float, float]], tag: str) -> None:
    """A TensorBoard event file whose first event (the run's start) is at 1000 s and whose
    points are logged the given seconds later."""
    (folder / "tb").mkdir()
    with open(folder / "tb" / "events.out.tfevents.1000.test", "wb") as f:
        writer = RecordWriter(f)
        writer.write(Event(wall_time=1000.0, file_version="brain.Event:2").SerializeToString())
        for step, seconds, value in points:
            values = [Summary.Value(tag=tag, simple_value=value)]
            if tag == "eval/loss":
                values.append(Summary.Value(tag="eval/bpc", simple_value=value / LN2))
            writer.write(Event(wall_time=1000.0 + seconds, step=step,
                               summary=Summary(value=values)).SerializeToString())


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("suite")
    for workload, spec in SUITE.items():
        metric = spec["objective"]
        for row, (optimizer, lr, step_ms, seeds) in spec["rows"].items():
            for seed, (status, final, points) in enumerate(seeds):
                run = root / workload / row / f"seed{seed}"
                (run / ".hydra").mkdir(parents=True)
                config = {"task": {"name": "t"}, "optimizer": {"name": optimizer},
                          "lr": {"name": lr}, "seed": seed, "objective": metric,
                          "workload": workload}
                (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
                (run / "summary.json").write_text(json.dumps({
                    "status": status, "steps": 20 if status == "completed" else 12,
                    "final": {metric: final}, "step_time_ms": {"mean": step_ms},
                    "wall_time_s": 10.0}))
                write_events(run, points, metric.replace("_", "/"))
    sweep = root / "wa" / "tune" / "cosine"
    for trial, lr in enumerate((1e-3, 3e-3)):
        (sweep / str(trial) / ".hydra").mkdir(parents=True)
        (sweep / str(trial) / ".hydra" / "config.yaml").write_text(yaml.safe_dump(
            {"optimizer": {"name": "adamw", "lr": lr}, "lr": {"name": "cosine"}, "seed": 0,
             "lr_range": [1e-5, 0.1], "workload": "wa"}))
        (sweep / str(trial) / "summary.json").write_text(json.dumps(
            {"status": "completed", "final": {"eval_acc": 0.5 + trial}}))
    (sweep / "optimization_results.yaml").write_text(yaml.safe_dump(
        {"name": "optuna", "best_params": {"optimizer.lr": 3e-3}, "best_value": 0.93}))
    return root


@pytest.fixture(scope="module")
def board(suite):
    return build_leaderboard(suite)


def cell(board, workload, row):
    return board.entry(workload, row)


def test_rows_and_tuning_runs_apart(board):
    assert board.workloads == ["wa", "wb"]
    assert sorted((e.workload, e.row) for e in board.entries) == [
        ("wa", "A"), ("wa", "B"), ("wb", "A"), ("wb", "B"), ("wb", "C")]
    (tuning,) = board.tuning
    assert (tuning.workload, tuning.baseline, tuning.trials) == ("wa", "cosine", 2)
    assert tuning.lr_range == (1e-5, 0.1) and tuning.best_lr == 3e-3 and tuning.best_value == 0.93


def test_final_metric_mean_std_and_failures(board):
    a = cell(board, "wa", "A")
    assert a.metric == "eval_acc"
    assert a.final.mean == pytest.approx(0.9125) and a.final.std == pytest.approx(0.015 / math.sqrt(2))
    wb_a = cell(board, "wb", "A")
    assert wb_a.metric == "eval_loss" and wb_a.final.mean == pytest.approx((0.905 + 0.906 + 0.95) / 3)
    c = cell(board, "wb", "C")
    assert c.final.mean is None and c.failures == 2 and wb_a.failures == 0


def test_targets_and_medians_to_them(board):
    assert str(board.targets["wa"]) == "eval/acc>=0.903"  # 99% of 0.9125, rounded down
    assert board.targets["wb"].value == pytest.approx(0.9 / 0.99) and board.targets["wb"].tag == "eval/loss"
    a, b = cell(board, "wa", "A"), cell(board, "wa", "B")
    assert a.steps_to_target == 20 and a.time_to_target_s == 2.0
    assert math.isinf(b.steps_to_target) and math.isinf(b.time_to_target_s)
    # wb/A: two of three seeds get to 0.909 at step 20 (4 s), the third never: the median is finite
    wb_a = cell(board, "wb", "A")
    assert wb_a.steps_to_target == 20 and wb_a.time_to_target_s == 4.0
    assert cell(board, "wb", "B").time_to_target_s == 1.0
    assert math.isinf(cell(board, "wb", "C").time_to_target_s)


def test_cost_against_the_base_optimizer_at_a_constant_lr(board):
    assert cell(board, "wa", "B").cost_ratio == pytest.approx(1.2)
    assert cell(board, "wb", "B").cost_ratio == pytest.approx(1.5)
    assert cell(board, "wb", "C").cost_ratio == pytest.approx(1.25)  # a peer, against adamw


def test_ranks_per_workload_and_across(board):
    ranks = {(e.workload, e.row): e.rank for e in board.entries}
    assert ranks == {("wa", "A"): 1, ("wa", "B"): 2, ("wb", "B"): 1, ("wb", "A"): 2, ("wb", "C"): 3}
    assert board.mean_rank("A") == board.mean_rank("B") == 1.5 and board.mean_rank("C") == 3
    assert board.rows == ["A", "B", "C"]


def test_performance_profile_ratios(board):
    time_ratios = performance_profile(board.entries, board.rows, board.workloads)
    assert time_ratios["A"] == [1.0, 4.0]
    assert time_ratios["B"] == [math.inf, 1.0]
    assert time_ratios["C"] == [math.inf, math.inf]  # wa: it did not run; wb: it diverged
    steps = performance_profile(board.entries, board.rows, board.workloads, "steps_to_target")
    assert steps["A"] == [1.0, 1.0]


def test_files_and_the_command_line(suite, tmp_path, capsys):
    report_main([str(suite), "--leaderboard", "--out", str(tmp_path / "lb")])
    out = capsys.readouterr().out
    assert "5 row(s) on 2 workload(s)" in out
    md = (tmp_path / "lb" / "leaderboard.md").read_text()
    assert "| A | 1.50 | 1 | 2 |" in md and "| C | 3.00 | — | 3 |" in md
    assert "(1.298 bpc)" in md  # wb/B: 0.9 nats = 1.298 bits per character
    assert "tuning trials included, took 1m50s of wall time" in md  # 11 runs of 10 s
    assert "| wa | cosine | 2 | 1e-05 … 0.1 | 0.003 | 0.93 |" in md
    assert (tmp_path / "lb" / "performance_profile.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "lb").glob("lr_*.png"))  # no row whose lr a method sets
    rows = list(csv.DictReader(open(tmp_path / "lb" / "leaderboard.csv")))
    wb_c = next(r for r in rows if (r["workload"], r["row"]) == ("wb", "C"))
    assert wb_c["n_failures"] == "2" and wb_c["mean"] == "" and float(wb_c["rank"]) == 3


def test_an_lr_figure_per_workload_of_the_rows_whose_lr_a_method_sets(tmp_path, monkeypatch):
    plotted = {}

    def lr_figure(groups, path, title=""):
        plotted[path.name] = [g.name for g in groups]
        path.write_bytes(b"png")
        return path

    monkeypatch.setattr("genlr.report.leaderboard.lr_figure", lr_figure)
    for row, lrs in {"gen_exact": [1e-3, 3e-3], "cosine_tuned": [2e-3, 1e-3],
                     "prodigy": [1.0, 1.0]}.items():
        run = tmp_path / "suite" / "wa" / row / "seed0"
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(
            {"task": {"name": "t"}, "optimizer": {"name": "adamw"}, "lr": {"name": row},
             "seed": 0, "objective": "eval_acc", "workload": "wa"}))
        (run / "summary.json").write_text(json.dumps(
            {"status": "completed", "steps": 20, "final": {"eval_acc": 0.9}}))
        write_events(run, [(10, 1, lrs[0]), (20, 2, lrs[1])], "train/lr")
    board = write_leaderboard(tmp_path / "suite")
    assert plotted == {"lr_wa.png": ["cosine_tuned", "gen_exact"]}  # the peer left out
    assert "![lr over training, wa](lr_wa.png)" in (board.out / "leaderboard.md").read_text()


def test_a_folder_that_is_not_a_suite_gets_one_line(tmp_path, capsys):
    run = tmp_path / "sweep" / "0"
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"status": "completed", "final": {}}))
    with pytest.raises(SystemExit) as exit_:
        report_main([str(tmp_path / "sweep"), "--leaderboard"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a suite folder" in err[0] and "<workload>/<row>/<run>" in err[0]
    with pytest.raises(NoRunsError):
        write_leaderboard(tmp_path / "missing")
