"""Bad command lines through the real gen-train console script: each must exit non-zero
with exactly one line on stderr that names the key, never a traceback, and leave no run
behind (no run folder, no summary.json). The whole table runs under ``-m slow``; a few
representative rows run by default."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

GEN_TRAIN = str(Path(sys.executable).with_name("gen-train"))
BASE = ["task=logreg", "model=mlp", "trainer.max_steps=2"]  # quick, no data on disk

# (extra arguments, text the one line must contain: the key, or the flag). {tmp} is a
# scratch folder holding `a_file` (an empty file).
TABLE: list[tuple[list[str], str]] = [
    # config groups: unknown options
    (["lr=nonexistent"], "lr"),
    (["task=imagenet"], "task"),
    (["model=transformer9"], "model"),
    (["optimizer=lamb"], "optimizer"),
    (["trainer=fast"], "trainer"),
    (["experiment=nope"], "experiment"),
    (["hydra/launcher=nope"], "hydra/launcher"),
    (["lr="], "lr"),
    (["lr=cösine"], "lr=cösine"),
    # trainer settings
    (["trainer.max_steps=abc"], "trainer.max_steps"),
    (["trainer.max_steps=2.5"], "trainer.max_steps"),
    (["trainer.max_steps=0"], "trainer.max_steps"),
    (["trainer.compile=maybe"], "trainer.compile"),
    (["trainer.batch_size=0"], "trainer.batch_size"),
    (["trainer.batch_size=-4"], "trainer.batch_size"),
    (["trainer.eval_batch_size=0"], "trainer.eval_batch_size"),
    (["trainer.epochs=0"], "trainer.epochs"),
    (["trainer.log_every=0"], "trainer.log_every"),
    (["trainer.eval_every=-1"], "trainer.eval_every"),
    (["trainer.checkpoint_every=-5"], "trainer.checkpoint_every"),
    (["trainer.profile_every=-1"], "trainer.profile_every"),
    (["trainer.amp=fp8"], "trainer.amp"),
    (["trainer.device=tpu"], "trainer.device"),
    (["trainer.strategy=fsdp"], "trainer.strategy"),
    (["trainer.strategy=ddp"], "trainer.strategy"),
    (["trainer.foo=1"], "trainer.foo"),
    (["trainer.batch_sze=4"], "trainer.batch_sze"),
    (["+trainer.foo=1"], "trainer.foo"),
    (["~trainer.max_steps"], "trainer.max_steps"),
    (["trainer.resume={tmp}/missing"], "trainer.resume"),
    (["trainer.resume=true"], "trainer.resume"),
    # the seed
    (["seed=abc"], "seed"),
    (["seed=1.5"], "seed"),
    (["seed=99999999999999999999"], "seed"),
    (["seed=null"], "seed"),
    (["task=rosenbrock", "model=coords", "seed=3"], "seed"),
    # optimizer options
    (["optimizer.lr=abc"], "optimizer.lr"),
    (["optimizer.lr=inf"], "optimizer.lr"),
    (["optimizer.lr=1e400"], "optimizer.lr"),
    (["optimizer.lr=nan"], "optimizer.lr"),
    (["optimizer.lr=-1"], "lr"),
    (["optimizer.betas=[0.9]"], "optimizer.betas"),
    (["optimizer.betas=[0.9,0.99,0.999]"], "optimizer.betas"),
    (["optimizer.betas=0.9"], "optimizer.betas"),
    (["optimizer.betas=[0.9,2]"], "betas"),
    (["optimizer.weight_decay=-0.1"], "weight_decay"),
    (["optimizer.eps=-1"], "eps"),
    (["optimizer=sgd", "optimizer.momentum=-1"], "momentum"),
    (["optimizer.foo=1"], "optimizer.foo"),
    (["+optimizer.foo=1"], "optimizer.foo"),
    # lr-method options
    (["lr.foo=1"], "lr.foo"),
    (["+lr.foo=1"], "lr.foo"),
    (["lr.r2_min=2"], "r2_min"),
    (["lr.scale=foo"], "lr.scale"),
    (["lr.every=0"], "every"),
    (["lr.smoothing=1.5"], "smoothing"),
    (["lr.points=[0,1]"], "points"),
    (["lr=cosine", "lr.final_factor=2"], "final_factor"),
    (["lr=cosine", "lr.final_factor=abc"], "lr.final_factor"),
    (["lr=newt", "lr.approx=exact"], "lr.approx"),
    (["lr=step", "lr.milestones=abc"], "lr.milestones"),
    (["optimizer=prodigy", "lr=gen_parabola"], "lr=gen_parabola"),
    # tasks and models
    (["task=quadratic", "model=cnn"], "model"),
    (["model=coords"], "model"),
    (["model.foo=1"], "model.foo"),
    (["task=fashion_mnist", "model=cnn", "task.train_size=-10"], "train_size"),
    (["task=fashion_mnist", "model=cnn", "task.train_size=0"], "train_size"),
    (["task=mnist", "model=cnn", "task.download=false", "task.data_root={tmp}/nowhere"],
     "task.data_root"),
    (["task=fashion_mnist", "model=cnn", "task.data_root={tmp}/a_file"], "task.data_root"),
    (["task=quadratic", "model=coords", "task.dim=0"], "dim"),
    (["task=quadratic", "model=coords", "task.condition=0.5"], "condition"),
    (["task=quadratic", "model=coords", "task.steps_per_epoch=0"], "steps_per_epoch"),
    (["task=quadratic", "model=coords", "task.start_noise=-1"], "start_noise"),
    (["+foo=1"], "foo"),
    (["foo=1"], "foo"),
    # Hydra's settings, sweeps and flags
    (["hydra.run.dir="], "hydra.run.dir"),
    (["hydra.run.dir=/proc/x"], "hydra.run.dir"),
    (["hydra.run.dir={tmp}/a_file/run"], "hydra.run.dir"),
    (["hydra.job.chdir=${{oops}}"], "hydra.job.chdir"),
    (["lr=constant,cosine"], "lr=constant,cosine"),
    (["-m", "lr=constant,nope"], "lr"),
    (["-m", "optimizer.lr=0.1,-1"], "lr"),
    (["-m", "hydra.sweep.dir="], "hydra.sweep.dir"),
    (["--foo"], "--foo"),
    (["--config-dir", "{tmp}/missing"], "--config-dir"),
]
if shutil.which("sbatch") is None:
    TABLE.append((["-m", "hydra/launcher=slurm"], "hydra/launcher=slurm"))
if not torch.cuda.is_available():
    TABLE.append((["trainer.device=cuda"], "trainer.device"))

DEFAULT_ROWS = ["lr=nonexistent", "trainer.max_steps=abc", "optimizer.betas=[0.9]",
                "seed=99999999999999999999", "task=quadratic", "hydra.run.dir=/proc/x"]


def gen_train(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([GEN_TRAIN, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)


def problems(args: list[str], key: str, tmp: Path) -> list[str]:
    """What is wrong with how gen-train refused ``args`` (nothing: an empty list)."""
    case = Path(tempfile.mkdtemp(dir=tmp))
    (case / "a_file").write_text("")
    args = [a.format(tmp=case) for a in args]
    run_dir, sweep_dir = case / "run", case / "sweep"
    places = [f"{key}={value}" for key, value in (("hydra.run.dir", run_dir),
                                                  ("hydra.sweep.dir", sweep_dir))
              if not any(a.startswith(f"{key}=") for a in args)]
    proc = gen_train([*BASE, *places, *args], cwd=case)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    found = []
    if proc.returncode == 0:
        found.append("exit status 0")
    if "Traceback" in proc.stderr:
        found.append("a traceback")
    if len(lines) != 1:
        found.append(f"{len(lines)} lines on stderr")
    elif key.format(tmp=case) not in lines[0] or not lines[0].startswith("gen-train: "):
        found.append(f"the line does not name {key!r}")
    if list(case.rglob("summary.json")) or run_dir.exists() or sweep_dir.exists():
        found.append("a run folder was left behind")
    return [f"{args}: {', '.join(found)}: {proc.stderr.strip()!r}"] if found else []


@pytest.mark.parametrize("row", DEFAULT_ROWS)
def test_representative_bad_overrides(row, tmp_path):
    args, key = next((a, k) for a, k in TABLE if a[0] == row)
    assert problems(args, key, tmp_path) == []


@pytest.mark.slow
def test_every_bad_override_in_the_table(tmp_path):
    assert len(TABLE) >= 60
    with ThreadPoolExecutor(max_workers=4) as pool:
        found = sum(pool.map(lambda row: problems(*row, tmp_path), TABLE), [])
    assert found == [], "\n".join(found)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    """A finished run (task=logreg model=mlp, the defaults otherwise) and broken files."""
    root = tmp_path_factory.mktemp("checkpoints")
    proc = gen_train([*BASE, f"hydra.run.dir={root / 'done'}"], cwd=root)
    assert proc.returncode == 0, proc.stderr
    good = (root / "done" / "checkpoints" / "last.pt").read_bytes()
    (root / "garbage.pt").write_bytes(bytes(range(256)) * 4)
    (root / "empty.pt").write_bytes(b"")
    (root / "truncated.pt").write_bytes(good[: len(good) // 2])
    torch.save({"weights": torch.zeros(3)}, root / "foreign.pt")
    torch.save({"model": argparse.Namespace()}, root / "object.pt")
    (root / "no_checkpoint").mkdir()
    return root


RESUME_TABLE: list[list[str]] = [
    ["optimizer.lr=0.01"],  # another config
    ["lr=cosine"],
    ["model=linear"],
    ["seed=5"],
    ["model=linear", "trainer.resume_with_changes=true"],  # told to go on: the state does not fit
    ["lr=cosine", "trainer.resume_with_changes=true"],
]
BROKEN = ["garbage.pt", "empty.pt", "truncated.pt", "foreign.pt", "object.pt", "no_checkpoint"]


@pytest.mark.slow
def test_every_resume_mismatch_and_broken_checkpoint_is_one_line(checkpoints, tmp_path):
    rows = [([f"trainer.resume={checkpoints / 'done'}", *args], "trainer.resume")
            for args in RESUME_TABLE]
    rows += [([f"trainer.resume={checkpoints / name}"], "trainer.resume") for name in BROKEN]
    with ThreadPoolExecutor(max_workers=4) as pool:
        found = sum(pool.map(lambda row: problems(*row, tmp_path), rows), [])
    assert found == [], "\n".join(found)


@pytest.mark.slow
def test_a_representative_resume_rejection(checkpoints, tmp_path):
    assert problems([f"trainer.resume={checkpoints / 'done'}", "optimizer.lr=0.01"],
                    "trainer.resume", tmp_path) == []


@pytest.mark.slow
def test_a_resume_with_changes_when_told_runs_and_says_what_changed(checkpoints, tmp_path):
    run_dir = tmp_path / "run"
    proc = gen_train([*BASE[:2], "trainer.max_steps=4", f"trainer.resume={checkpoints / 'done'}",
                      "optimizer.lr=0.01", "trainer.resume_with_changes=true",
                      f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        "gen-train: resuming with a changed config (trainer.resume_with_changes): "
        "optimizer.lr 0.001 -> 0.01"]
    assert "optimizer.lr 0.001 -> 0.01" in (run_dir / "train.log").read_text()


@pytest.mark.slow
def test_a_second_run_in_a_folder_in_use_is_refused(tmp_path):
    from genlr.engine import run_dir_lock

    (tmp_path / "run").mkdir()
    with run_dir_lock(tmp_path / "run"):
        proc = gen_train([*BASE, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        f"gen-train: hydra.run.dir={tmp_path / 'run'}: another run is using this folder (it holds "
        f"{tmp_path / 'run' / '.lock'}); give this run its own folder"]
    assert not (tmp_path / "run" / "summary.json").exists()
