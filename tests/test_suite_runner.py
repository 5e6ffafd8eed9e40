"""gen-suite: the protocol it runs (tuning, then every row over the seeds), the rows of each
optimizer family, resuming (finished jobs skipped, the rest run again), --quick, and the
leaderboard at the end. gen-train is replaced by a fake that writes what a job leaves; the
real end-to-end quick run is in the slow set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gen_cli import suite as gen_suite

FASHION = Path("/usr/share/datasets/fashion-mnist")


class FakeGenTrain:
    """Records each gen-train call and writes the outputs of its jobs: a tuning sweep's
    trials and optimization_results.yaml, a row's seed folders with summary.json."""

    def __init__(self, statuses: dict[tuple[str, int], str] | None = None) -> None:
        self.calls: list[list[str]] = []
        self.statuses = statuses or {}  # (row folder name, seed) -> status

    def __call__(self, suite, log: str, overrides: list[str]) -> int:
        self.calls.append(overrides)
        args = dict(o.split("=", 1) for o in overrides if "=" in o)
        folder = Path(args["hydra.sweep.dir"])
        config = {"workload": args["workload"], "objective": "eval_acc",
                  "lr": {"name": args.get("lr", "constant")},
                  "optimizer": {"name": args.get("optimizer", "sgd")}}
        if args.get("experiment") == "tune_lr":
            for trial in range(2):
                self._job(folder / str(trial), {**config, "seed": 0}, "completed")
            (folder / "optimization_results.yaml").write_text(yaml.safe_dump(
                {"best_params": {"optimizer.lr": 0.05}, "best_value": 0.8}))
            return 0
        for seed in map(int, args["seed"].split(",")):
            status = self.statuses.get((folder.name, seed), "completed")
            self._job(folder / f"seed{seed}", {**config, "seed": seed}, status)
        return 0

    @staticmethod
    def _job(run: Path, config: dict, status: str) -> None:
        (run / ".hydra").mkdir(parents=True, exist_ok=True)
        (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
        (run / "summary.json").write_text(json.dumps({
            "status": status, "steps": 10, "wall_time_s": 1.0, "step_time_ms": {"mean": 5.0},
            "final": {"eval_acc": 0.8 if status == "completed" else None}}))


@pytest.fixture
def fake(monkeypatch) -> FakeGenTrain:
    fake = FakeGenTrain()
    monkeypatch.setattr(gen_suite.Suite, "gen_train",
                        lambda suite, log, overrides: fake(suite, log, overrides))
    return fake


def rows_called(fake: FakeGenTrain) -> dict[str, list[str]]:
    """Row folder name -> overrides, for the calls that ran rows (not tuning)."""
    out = {}
    for overrides in fake.calls:
        args = dict(o.split("=", 1) for o in overrides if "=" in o)
        if args.get("experiment") != "tune_lr":
            out[Path(args["hydra.sweep.dir"]).name] = overrides
    return out


def test_the_protocol_on_an_sgd_workload(fake, tmp_path, capsys):
    gen_suite.main([str(tmp_path / "out"), "--workloads", "fmnist_linear", "--seeds", "2"])
    tunes = [o for o in fake.calls if "experiment=tune_lr" in o]
    assert [next(a for a in o if a.startswith("lr=")) for o in tunes] == ["lr=constant", "lr=cosine"]
    assert all("workload=fmnist_linear" in o and "size=cpu" in o for o in fake.calls)
    rows = rows_called(fake)
    assert list(rows) == ["constant_tuned", "cosine_tuned", "gen_parabola", "gen_exact", "newt",
                          "dadapt_sgd", "schedulefree", "gen_optim"]
    assert {"lr=cosine", "optimizer.lr=0.05", "seed=0,1"} <= set(rows["cosine_tuned"])
    assert {"lr=gen_exact", "-m", "hydra.sweep.subdir=seed${seed}"} <= set(rows["gen_exact"])
    assert not any(o.startswith("optimizer") for o in rows["gen_exact"])  # the workload's own
    assert {"optimizer=gen_optim_sgd", "lr=constant"} <= set(rows["gen_optim"])
    assert {"optimizer=schedulefree_sgd", "optimizer.momentum=0.9"} <= set(rows["schedulefree"])
    board = tmp_path / "out" / "leaderboard" / "leaderboard.md"
    assert board.is_file()
    assert "8 row(s) on 1 workload(s)" in capsys.readouterr().out


def test_an_adamw_workload_gets_the_adam_peers(fake, tmp_path):
    gen_suite.main([str(tmp_path / "out"), "--workloads", "fmnist_cnn", "--seeds", "1"])
    rows = rows_called(fake)
    assert {"prodigy", "dadapt_adam", "schedulefree"} <= set(rows)
    assert "optimizer=gen_optim_adamw" in rows["gen_optim"]
    assert "optimizer=schedulefree_adamw" in rows["schedulefree"]


def test_an_rmsprop_workload_gets_ours_and_the_baselines(fake, tmp_path):
    # No peer is built on RMSprop, and there is no GeN optimizer class for it.
    gen_suite.main([str(tmp_path / "out"), "--workloads", "heldout_mlp_rmsprop", "--seeds", "1"])
    assert list(rows_called(fake)) == ["constant_tuned", "cosine_tuned", "gen_parabola",
                                       "gen_exact", "newt"]
    fake.calls.clear()
    gen_suite.main([str(tmp_path / "sens"), "--workloads", "heldout_mlp_rmsprop",
                    "--sensitivity", "--rows", "gen_exact", "--multipliers", "1"])
    assert list(rows_called(fake)) == ["x1"]


def test_every_held_out_workload_has_its_rows():
    suite = gen_suite.Suite(Path("unused"), "cpu", 1, False)
    assert all(suite.family(w) in gen_suite.PEERS for w in gen_suite.HELDOUT_WORKLOADS)


def test_a_rerun_skips_finished_jobs_and_runs_the_rest(fake, tmp_path, capsys):
    out = str(tmp_path / "out")
    fake.statuses = {("gen_parabola", 1): "interrupted", ("newt", 0): "diverged",
                     ("gen_exact", 2): "failed"}
    gen_suite.main([out, "--workloads", "fmnist_linear"])
    first = len(fake.calls)
    fake.calls.clear()
    fake.statuses = {}
    gen_suite.main([out, "--workloads", "fmnist_linear"])
    rows = rows_called(fake)
    assert first == 10 and len(fake.calls) == 2  # no tuning again; two rows with unfinished seeds
    assert "seed=1" in rows["gen_parabola"] and "seed=2" in rows["gen_exact"]  # not newt's divergence
    assert "newt: seed0 diverged, seed1 completed, seed2 completed (already there)" in capsys.readouterr().out


def test_every_job_goes_on_from_its_checkpoint(fake, tmp_path):
    """A tuning sweep cut short keeps its trials (the rerun replays them from their
    checkpoints), and an unfinished seed goes on from its own."""
    out = tmp_path / "out"
    partial = out / "fmnist_linear" / "tune" / "cosine" / "7"
    partial.mkdir(parents=True)  # a trial of an earlier attempt, no optimization_results.yaml
    gen_suite.main([str(out), "--workloads", "fmnist_linear", "--seeds", "1"])
    assert partial.exists()
    assert (out / "fmnist_linear" / "tune" / "cosine" / "optimization_results.yaml").is_file()
    assert all("trainer.resume=auto" in call for call in fake.calls)


def test_quick_mode(fake, tmp_path):
    gen_suite.main([str(tmp_path / "out"), "--quick"])
    tunes = [o for o in fake.calls if "experiment=tune_lr" in o]
    assert len(tunes) == 4 and all("hydra.sweeper.n_trials=2" in o and "lr=cosine" in o for o in tunes)
    assert all(set(gen_suite.QUICK_TRAINER) <= set(o) for o in fake.calls)
    rows = [o for o in fake.calls if "experiment=tune_lr" not in o]
    assert all("seed=0" in o for o in rows) and len(rows) == 4 * 4
    workloads = {a for o in fake.calls for a in o if a.startswith("workload=")}
    assert workloads == {f"workload={w}" for w in gen_suite.CPU_WORKLOADS}


@pytest.mark.parametrize("args, expected", [
    (["--workloads", "cifar10_resnet18"], "cifar10_resnet18 is not a cpu workload"),
    (["--workloads", "nope"], "nope is not a cpu workload"),
    (["--seeds", "0"], "--seeds must be a positive integer, got 0"),
])
def test_bad_arguments_get_one_line(args, expected, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        gen_suite.main([str(tmp_path / "out"), *args])
    assert exit_.value.code == 2
    assert expected in capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_real_quick_suite_on_one_workload_resumes(tmp_path):
    """The real gen-suite --quick on fmnist_linear: tuning through Optuna, the rows, the
    leaderboard; a second run starts no gen-train."""
    cmd = [str(Path(sys.executable).with_name("gen-suite")), str(tmp_path / "out"), "--quick",
           "--workloads", "fmnist_linear"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, env=env)
    assert first.returncode == 0, first.stderr
    board = (tmp_path / "out" / "leaderboard" / "leaderboard.md").read_text()
    for row in ("cosine_tuned", "gen_parabola", "gen_optim", "dadapt_sgd"):
        assert f"| {row} |" in board, board
    logs = sorted((tmp_path / "out" / "logs").iterdir())
    sizes = [p.stat().st_size for p in logs]
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert second.returncode == 0 and "(already there)" in second.stdout
    assert [p.stat().st_size for p in logs] == sizes  # no gen-train ran
