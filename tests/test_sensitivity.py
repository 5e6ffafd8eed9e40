"""Sensitivity to the initial lr: the grid and overrides ``gen-suite --sensitivity`` issues
(gen-train replaced by a fake that writes what a job leaves), resuming, each row's
multiplier applied to its own default lr (a peer's included), the held-out workloads, and
``gen-report --sensitivity`` on hand-written summaries whose spreads, gaps and failures can
be worked out by hand. The real quick run is in the slow set."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gen_cli import suite as gen_suite
from gen_cli.report import main as report_main
from genlr.report.leaderboard import build_leaderboard
from genlr.report.sensitivity import build_sensitivity, figure, write_sensitivity


class FakeGenTrain:
    """Records each gen-train call (overrides by its folder relative to OUT) and writes its
    seeds' summary.json and .hydra/config.yaml; ``statuses`` by (``<row>/x<mult>``, seed)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.calls: dict[str, list[str]] = {}
        self.statuses: dict[tuple[str, int], str] = {}

    def __call__(self, suite, log: str, overrides: list[str]) -> int:
        args = dict(o.split("=", 1) for o in overrides if "=" in o)
        folder = Path(args["hydra.sweep.dir"])
        where = folder.relative_to(self.out).as_posix()
        assert where not in self.calls, f"{where} ran twice"
        self.calls[where] = overrides
        for seed in map(int, args.get("seed", "0").split(",")):  # no seed=: the config's 0
            status = self.statuses.get((f"{folder.parent.name}/{folder.name}", seed), "completed")
            run = folder / f"seed{seed}"
            (run / ".hydra").mkdir(parents=True, exist_ok=True)
            (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump({
                "workload": args["workload"], "objective": "eval_acc", "seed": seed,
                "lr": {"name": args["lr"]},
                "optimizer": {"name": args.get("optimizer", "sgd"),
                              "lr": float(args["optimizer.lr"])}}))
            (run / "summary.json").write_text(json.dumps({
                "status": status, "final": {"eval_acc": 0.8 if status == "completed" else None}}))
        return 0


@pytest.fixture
def fake(monkeypatch, tmp_path) -> FakeGenTrain:
    fake = FakeGenTrain(tmp_path / "out")
    monkeypatch.setattr(gen_suite.Suite, "gen_train",
                        lambda suite, log, overrides: fake(suite, log, overrides))
    return fake


def lr_of(overrides: list[str]) -> float:
    return float(next(o for o in overrides if o.startswith("optimizer.lr="))[len("optimizer.lr="):])


def test_the_grid_and_overrides_on_an_sgd_workload(fake, tmp_path, capsys):
    out = tmp_path / "out"
    gen_suite.main([str(out), "--sensitivity", "--workloads", "fmnist_linear"])
    baselines = ["x0.01", "x0.03", "x0.1", "x0.3", "x1", "x3", "x10", "x30", "x100"]
    decades = ["x0.01", "x0.1", "x1", "x10", "x100"]
    expected = {f"fmnist_linear/sensitivity/{row}/{x}"
                for row, grid in (("constant", baselines), ("cosine", baselines),
                                  ("gen_parabola", decades), ("gen_exact", decades),
                                  ("newt", decades), ("dadapt_sgd", decades),
                                  ("schedulefree", decades)) for x in grid}
    assert set(fake.calls) == expected  # one gen-train per (row, multiplier), no tuning
    for overrides in fake.calls.values():
        assert {"-m", "workload=fmnist_linear", "size=cpu", "trainer.resume=auto", "seed=0",
                "hydra.sweep.subdir=seed${seed}"} <= set(overrides)
        assert not any(o.startswith(("experiment=", "trainer.max_steps")) for o in overrides)
    calls = {where.split("/", 2)[2]: o for where, o in fake.calls.items()}
    # SGD's default on this workload is 0.1; the workload's own optimizer for our rows
    assert "lr=constant" in calls["constant/x0.03"] and lr_of(calls["constant/x0.03"]) == 0.003
    assert lr_of(calls["cosine/x100"]) == 10.0 and lr_of(calls["cosine/x1"]) == 0.1
    assert lr_of(calls["gen_exact/x0.01"]) == 0.001
    assert not any(o.startswith("optimizer=") for o in calls["gen_exact/x0.01"])
    # the peers: the multiplier on their own default (D-Adaptation's and Schedule-Free's 1.0)
    assert {"optimizer=dadapt_sgd", "lr=constant"} <= set(calls["dadapt_sgd/x10"])
    assert lr_of(calls["dadapt_sgd/x10"]) == 10.0 and lr_of(calls["dadapt_sgd/x0.01"]) == 0.01
    assert {"optimizer=schedulefree_sgd",
            "optimizer.momentum=0.9"} <= set(calls["schedulefree/x0.1"])
    assert lr_of(calls["schedulefree/x0.1"]) == 0.1
    # the report at the end, not the leaderboard
    assert (out / "sensitivity" / "sensitivity.md").is_file()
    assert (out / "sensitivity" / "sensitivity_fmnist_linear.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / "leaderboard").exists()
    assert "7 row(s) on 1 workload(s)" in capsys.readouterr().out


def test_an_adamw_workload_multiplies_each_peers_own_default(fake, tmp_path):
    gen_suite.main([str(tmp_path / "out"), "--sensitivity", "--workloads", "fmnist_cnn"])
    calls = {where.split("/", 2)[2]: o for where, o in fake.calls.items()}
    assert {row.split("/")[0] for row in calls} == {
        "constant", "cosine", "gen_parabola", "gen_exact", "newt", "prodigy", "dadapt_adam",
        "schedulefree"}
    assert lr_of(calls["gen_parabola/x10"]) == 0.01  # AdamW's 1e-3
    assert lr_of(calls["constant/x0.03"]) == 3e-05  # not 3.0000000000000004e-05
    assert "optimizer.lr=3e-05" in calls["constant/x0.03"]
    assert "optimizer=prodigy" in calls["prodigy/x0.1"] and lr_of(calls["prodigy/x0.1"]) == 0.1
    assert lr_of(calls["dadapt_adam/x100"]) == 100.0
    assert "optimizer=schedulefree_adamw" in calls["schedulefree/x10"]
    assert lr_of(calls["schedulefree/x10"]) == 0.025  # Schedule-Free AdamW's default 0.0025


def test_a_rerun_skips_finished_runs_and_resumes_the_rest(fake, tmp_path, capsys):
    out = tmp_path / "out"
    fake.statuses = {("gen_parabola/x1", 0): "interrupted", ("cosine/x0.1", 0): "diverged"}
    gen_suite.main([str(out), "--sensitivity", "--quick", "--workloads", "fmnist_linear"])
    assert sorted(w.split("/", 2)[2] for w in fake.calls) == [
        "cosine/x0.1", "cosine/x1", "dadapt_sgd/x0.1", "dadapt_sgd/x1", "gen_parabola/x0.1",
        "gen_parabola/x1"]
    assert all(set(gen_suite.QUICK_TRAINER) <= set(o) for o in fake.calls.values())
    fake.calls.clear()
    fake.statuses = {}
    gen_suite.main([str(out), "--sensitivity", "--quick", "--workloads", "fmnist_linear"])
    (rerun,) = fake.calls.items()  # only the interrupted run, from its checkpoint
    assert rerun[0] == "fmnist_linear/sensitivity/gen_parabola/x1"
    assert "trainer.resume=auto" in rerun[1] and "seed=0" in rerun[1]
    printed = capsys.readouterr().out
    assert "fmnist_linear: sensitivity cosine x0.1: seed0 diverged (already there)" in printed
    # the divergence is a result: counted in the table, scored as accuracy 0
    cosine = build_sensitivity(out).workloads[0].curve("cosine")
    assert cosine.failures == 1 and cosine.value(0.1) == 0.0
    assert cosine.spread() == pytest.approx(0.8)
    assert "| cosine | 0.1 | div. | 0.800 | 80.0 pt | 80.0 pt | +0.0 pt | 1 |" in (
        out / "sensitivity" / "sensitivity.md").read_text()


def test_held_out_workloads_are_accepted_when_named(fake, tmp_path):
    gen_suite.main([str(tmp_path / "out"), "--sensitivity", "--quick", "--workloads",
                    "heldout_cnn_sgd"])
    assert {w.split("/")[0] for w in fake.calls} == {"heldout_cnn_sgd"}
    assert len(fake.calls) == 3 * 2  # cosine, gen_parabola, dadapt_sgd at x0.1 and x1


def test_a_workload_whose_task_ignores_the_seed_gets_one_run_and_no_seed(fake, tmp_path, capsys):
    """gen-train refuses seed= for a 2-D problem from a fixed start: one run per point."""
    gen_suite.main([str(tmp_path / "out"), "--sensitivity", "--quick", "--seeds", "3",
                    "--workloads", "heldout_beale"])
    assert len(fake.calls) == 6
    assert not any(o.startswith("seed=") for call in fake.calls.values() for o in call)
    calls = {where.split("/", 2)[2]: o for where, o in fake.calls.items()}
    assert lr_of(calls["cosine/x0.1"]) == 1e-4  # the workload's 1e-3
    printed = capsys.readouterr().out
    assert "heldout_beale: its task does not depend on the seed; one run per row" in printed
    assert "heldout_beale: sensitivity cosine x1: seed0 completed\n" in printed


def test_the_plain_suite_takes_a_held_out_workload(monkeypatch, tmp_path):
    ran = []

    class Board:
        entries, workloads, files = [], [], [tmp_path / "leaderboard.md"]

    monkeypatch.setattr(gen_suite.Suite, "run", lambda suite, workload: ran.append(workload))
    monkeypatch.setattr("genlr.report.leaderboard.write_leaderboard", lambda out, command: Board)
    gen_suite.main([str(tmp_path / "out"), "--workloads", "heldout_beale,fmnist_cnn"])
    assert ran == ["heldout_beale", "fmnist_cnn"]


@pytest.mark.parametrize("args, expected", [
    (["--sensitivity", "--workloads", "nope"],
     "nope is not a cpu workload (choose from fmnist_cnn, fmnist_mlp, fmnist_linear, "
     "charlm_gpt, heldout_prose_gpt, heldout_deep_gpt, heldout_cnn_sgd, heldout_rosenbrock, "
     "heldout_beale, heldout_vit_fmnist, heldout_mlp_rmsprop, heldout_long_gpt, "
     "heldout_dropout_gpt, heldout_teacher_sgd, heldout_linear_adagrad, heldout_logreg_sgd, "
     "heldout_teacher_adam)"),
    (["--size", "gpu", "--workloads", "heldout_beale"], "heldout_beale is not a gpu workload"),
])
def test_an_unknown_workload_names_the_allowed_ones(args, expected, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        gen_suite.main([str(tmp_path / "out"), *args])
    assert exit_.value.code == 2
    assert expected in capsys.readouterr().err.strip().splitlines()[-1]


# The report on hand-written runs. workload -> (objective, row -> {multiplier: [score per
# seed]}), a score None for a diverged run, "running" for a run without a summary yet.
DEFAULT_LR = {"constant": 1e-3, "cosine": 1e-3, "gen_parabola": 1e-3, "newt": 1e-3,
              "prodigy": 1.0, "gen_exact": 0.1}
SUITE = {
    "wl": ("eval_loss", {
        "constant": {0.01: [2.0], 0.03: [1.5], 0.1: [1.2], 0.3: [1.0], 1: [0.9], 3: [0.8],
                     10: [1.1], 30: [None], 100: [None]},
        "cosine": {0.01: [1.9], 0.1: [1.1], 1: [0.85], 10: [0.95], 100: [None]},
        "gen_parabola": {0.01: [1.0], 0.1: [0.9], 1: [0.88], 10: [0.92], 100: [1.3]},
        "newt": {0.1: [0.95], 1: [0.9], 10: [1.0, None]},
        "prodigy": {0.1: [0.83], 1: [0.83], 10: [0.83], 100: ["running"]},
    }),
    "wa": ("eval_acc", {
        "constant": {0.1: [0.80], 1: [0.85], 10: [None]},
        "cosine": {1: [0.86]},
        "gen_exact": {0.1: [0.84], 1: [0.85], 10: [0.83]},
    }),
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sensitivity")
    for workload, (metric, rows) in SUITE.items():
        for row, cells in rows.items():
            for mult, scores in cells.items():
                for seed, score in enumerate(scores):
                    run = root / workload / "sensitivity" / row / f"x{mult:g}" / f"seed{seed}"
                    (run / ".hydra").mkdir(parents=True)
                    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump({
                        "workload": workload, "objective": metric, "seed": seed,
                        "lr": {"name": row if row in ("cosine", "gen_parabola", "newt",
                                                      "gen_exact") else "constant"},
                        "optimizer": {"name": "prodigy" if row == "prodigy" else "adamw",
                                      "lr": DEFAULT_LR[row] * mult}}))
                    if score != "running":
                        (run / "summary.json").write_text(json.dumps({
                            "status": "diverged" if score is None else "completed",
                            "final": {metric: score}}))
    return root


@pytest.fixture(scope="module")
def report(folder):
    return build_sensitivity(folder)


def test_spreads_gaps_and_failures_on_a_loss(report):
    wl = next(w for w in report.workloads if w.name == "wl")
    assert wl.metric == "eval_loss"
    assert [c.row for c in wl.curves] == ["constant", "cosine", "gen_parabola", "newt", "prodigy"]
    tuned = wl.tuned
    assert (tuned.row, tuned.multiplier, tuned.value) == ("constant", 3, 0.8)
    assert tuned.lr == pytest.approx(3e-3)
    gen = wl.curve("gen_parabola")
    assert gen.spread(0.1, 10) == pytest.approx(0.04)  # 0.92 - 0.88
    assert gen.spread() == pytest.approx(0.42)  # 1.3 - 0.88
    assert wl.gap(gen) == pytest.approx(0.08) and gen.failures == 0
    assert gen.default_lr == pytest.approx(1e-3)
    constant = wl.curve("constant")
    assert constant.spread(0.1, 10) == pytest.approx(0.4)  # 1.2 - 0.8 over x0.1 … x10
    assert math.isinf(constant.spread()) and constant.failures == 2  # x30, x100 diverged
    newt = wl.curve("newt")  # one of x10's two seeds diverged: the loss there is infinite
    assert math.isinf(newt.value(10)) and newt.failures == 1 and math.isinf(newt.spread(0.1, 10))
    prodigy = wl.curve("prodigy")  # flat at 0.83; x100 still running: left out, counted apart
    assert prodigy.spread() == 0 and prodigy.pending == 1 and prodigy.value(100) is None
    assert prodigy.default_lr == pytest.approx(1.0)


def test_spreads_gaps_and_failures_on_an_accuracy(report):
    wa = next(w for w in report.workloads if w.name == "wa")
    assert wa.metric == "eval_acc"
    assert (wa.tuned.row, wa.tuned.multiplier) == ("cosine", 1)
    constant, exact = wa.curve("constant"), wa.curve("gen_exact")
    assert constant.value(10) == 0.0 and constant.spread(0.1, 10) == pytest.approx(0.85)
    assert exact.spread(0.1, 10) == pytest.approx(0.02)
    assert wa.gap(exact) == pytest.approx(-0.01)


def md_row(md: str, section: str, row: str) -> list[str]:
    text = md.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    line = next(line for line in text.splitlines() if line.startswith(f"| {row} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_the_table_and_the_figure(folder, tmp_path, capsys):
    report_main([str(folder), "--sensitivity", "--out", str(tmp_path / "s")])
    assert "6 row(s) on 2 workload(s)" in capsys.readouterr().out
    md = (tmp_path / "s" / "sensitivity.md").read_text()
    assert "flat line at the tuned baseline's height" in md.split("\n## ")[0]
    assert "Tuned baseline: `constant` at x3, lr 0.003: 0.8." in md
    assert md_row(md, "wl", "gen_parabola") == [
        "gen_parabola", "0.001", "1", "", "0.9", "", "0.88", "", "0.92", "", "1.3",
        "0.04 (4.5%)", "0.42 (47.7%)", "+0.08 (+10.0%)", "0"]
    assert md_row(md, "wl", "constant")[-5:] == ["div.", "0.4 (50.0%)", "∞", "+0.1 (+12.5%)", "2"]
    assert md_row(md, "wl", "newt")[8] == "div. (1/2 seeds)"
    assert md_row(md, "wl", "prodigy")[-5:] == [  # flat: lr-free over x0.1 … x10
        "not finished", "0 (0.0%)", "0 (0.0%)", "+0.03 (+3.7%)", "0"]
    assert "1 run(s) not finished are left out" in md
    assert md_row(md, "wa", "gen_exact") == [
        "gen_exact", "0.1", "0.840", "0.850", "0.830", "2.0 pt", "2.0 pt", "-1.0 pt", "0"]
    assert md_row(md, "wa", "constant")[-4:] == ["85.0 pt", "85.0 pt", "-1.0 pt", "1"]
    for workload in ("wl", "wa"):
        png = tmp_path / "s" / f"sensitivity_{workload}.png"
        assert png.read_bytes()[:4] == b"\x89PNG" and f"]({png.name})" in md


def test_the_figure_marks_divergence_at_the_worst_edge(report):
    for name, edge in (("wl", "top"), ("wa", "bottom")):
        workload = next(w for w in report.workloads if w.name == name)
        ax = figure(workload).axes[0]
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert f"diverged or failed (at the {edge} edge)" in labels
        assert any(label.startswith("tuned baseline: ") for label in labels)
        assert ax.get_xscale() == "log"
    wl = next(w for w in report.workloads if w.name == "wl")
    ax = figure(wl).axes[0]
    constant = next(line for line in ax.get_lines() if line.get_label() == "constant")
    ys = list(constant.get_ydata())
    assert ys[:7] == [2.0, 1.5, 1.2, 1.0, 0.9, 0.8, 1.1] and all(map(math.isnan, ys[7:]))
    tuned = next(line for line in ax.get_lines() if line.get_label().startswith("tuned"))
    assert list(tuned.get_ydata()) == [0.8, 0.8] and tuned.get_linestyle() == "--"
    assert ax.get_yscale() == "log"


def test_the_leaderboard_leaves_sensitivity_runs_out(folder, tmp_path):
    import shutil

    root = shutil.copytree(folder, tmp_path / "suite")
    run = root / "wl" / "gen_parabola" / "seed0"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(
        {"objective": "eval_loss", "lr": {"name": "gen_parabola"}, "optimizer": {"name": "adamw"},
         "seed": 0}))
    (run / "summary.json").write_text(json.dumps(
        {"status": "completed", "final": {"eval_loss": 0.9}}))
    board = build_leaderboard(root)
    assert [(e.workload, e.row) for e in board.entries] == [("wl", "gen_parabola")]
    assert len(write_sensitivity(root).workloads) == 2  # and the row is not a sensitivity run
    assert (root / "sensitivity" / "sensitivity.md").is_file()


@pytest.mark.parametrize("args, expected", [
    (["--leaderboard"], "--leaderboard does not apply to --sensitivity"),
    (["--target", "eval/acc=0.8"], "--target does not apply to --sensitivity"),
])
def test_flags_that_do_not_apply_get_one_line(folder, args, expected, capsys):
    with pytest.raises(SystemExit) as exit_:
        report_main([str(folder), "--sensitivity", *args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0]


@pytest.mark.parametrize("where, expected", [
    ("suite", "no sensitivity runs under"), ("missing", "(the path does not exist)"),
    ("stray", "is not at <workload>/sensitivity/<row>/x<mult>/<run>")])
def test_a_folder_without_sensitivity_runs_gets_one_line(where, expected, tmp_path, capsys):
    run = {"suite": tmp_path / "suite" / "w" / "row" / "seed0",
           "stray": tmp_path / "stray" / "w" / "sensitivity" / "row" / "seed0"}.get(where)
    if run:
        run.mkdir(parents=True)
        (run / "summary.json").write_text(json.dumps({"status": "completed", "final": {}}))
    with pytest.raises(SystemExit) as exit_:
        report_main([str(tmp_path / where), "--sensitivity"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err


@pytest.mark.slow
def test_real_quick_sensitivity_on_a_two_d_workload_resumes(tmp_path):
    """The real gen-suite --sensitivity --quick on heldout_beale (a second a run): the runs
    at their multiples, the report; a second run starts no gen-train."""
    cmd = [str(Path(sys.executable).with_name("gen-suite")), str(tmp_path / "out"),
           "--sensitivity", "--quick", "--workloads", "heldout_beale"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert first.returncode == 0, first.stderr
    md = (tmp_path / "out" / "sensitivity" / "sensitivity.md").read_text()
    for row in ("cosine", "gen_parabola", "dadapt_sgd"):
        assert f"| {row} |" in md, md
    config = yaml.safe_load((tmp_path / "out" / "heldout_beale" / "sensitivity" / "cosine" /
                             "x0.1" / "seed0" / ".hydra" / "config.yaml").read_text())
    assert config["optimizer"]["lr"] == pytest.approx(1e-4)  # the workload's 1e-3, x0.1
    logs = sorted((tmp_path / "out" / "logs").iterdir())
    sizes = [p.stat().st_size for p in logs]
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert second.returncode == 0 and "(already there)" in second.stdout
    assert [p.stat().st_size for p in logs] == sizes  # no gen-train ran
