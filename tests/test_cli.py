"""gen-train end to end: composition of every config option, the real CLI on real data,
sweeps, the run-output contract (the bad command lines: test_rejections.py)."""

from __future__ import annotations

import json
import re
import signal
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from gen_cli.jobs import UsageError, spec_from_config
from gen_cli.preflight import check_command_line
from gen_cli.schema import registries, register_schemas
from genlr.engine import train
from genlr.tracking import REQUIRED_KEYS, read_scalars

REPO = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist")
GEN_TRAIN = [str(Path(sys.executable).with_name("gen-train"))]  # the real console script
needs_fashion = pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")

register_schemas()


@pytest.fixture
def fake_datasets(fake_mnist, fake_fashion_root, fake_cifar10) -> Path:
    """A data root holding small MNIST, Fashion-MNIST and CIFAR-10 files in their real
    on-disk formats."""
    assert fake_mnist[0] == fake_fashion_root[0] == fake_cifar10[0]
    return fake_mnist[0]


def gen_train(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([*GEN_TRAIN, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def composed(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="gen_cli.conf", version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml"))


def test_every_registry_entry_has_a_config_and_back():
    for group, registry in registries().items():
        assert set(group_options(group)) == set(registry), group


QUICK = ["trainer.max_steps=2", "trainer.batch_size=8", "trainer.eval_batch_size=512",
         "trainer.progress=false", "trainer.plots=false"]


def _train_quick(overrides: list[str], tmp_path: Path) -> dict:
    cfg = composed([*QUICK, *overrides])
    summary = train(spec_from_config(cfg), tmp_path / "run")
    assert summary["status"] == "completed", summary.get("message")
    assert summary["steps"] == 2
    return summary


@pytest.mark.parametrize("lr", group_options("lr"))
def test_every_lr_option_trains(lr, tmp_path):
    _train_quick([f"lr={lr}", "task=logreg", "model=mlp", "optimizer=sgd"], tmp_path)


@pytest.mark.parametrize("optimizer", group_options("optimizer"))
def test_every_optimizer_option_trains(optimizer, tmp_path):
    _train_quick([f"optimizer={optimizer}", "task=logreg", "model=mlp", "lr=constant"], tmp_path)


@pytest.mark.parametrize("task", [pytest.param(t, marks=pytest.mark.slow) if t == "charlm" else t
                                  for t in group_options("task")])  # charlm: 16 s of text
def test_every_task_option_trains(task, tmp_path, fake_datasets):
    """Image tasks on small fake files (the real Fashion-MNIST run is in the slow set)."""
    overrides = [f"task={task}", "lr=constant"]
    if task in ("mnist", "cifar10", "fashion_mnist"):
        overrides.append(f"task.data_root={fake_datasets}")
    _train_quick(overrides, tmp_path)


@pytest.mark.parametrize("model", [m for m in group_options("model") if m not in ("coords", "gpt")])
def test_every_model_option_trains(model, tmp_path, fake_datasets):  # coords, gpt: their tasks'
    _train_quick([f"model={model}", "task=cifar10", f"task.data_root={fake_datasets}",
                  "lr=constant", "trainer.batch_size=4"], tmp_path)


def test_trainer_options_compose_and_train(tmp_path):
    _train_quick(["task=logreg", "model=mlp", "lr=cosine", "trainer.amp=bf16",
                  "trainer.eval_every=1", "trainer.log_every=1", "trainer.checkpoint_every=1",
                  "trainer.device=cpu", "seed=3"], tmp_path)


@needs_fashion
@pytest.mark.slow
def test_real_gen_train_on_fashion_mnist_leaves_the_whole_contract(tmp_path):
    run_dir = tmp_path / "run"
    proc = gen_train("trainer.max_steps=12", "trainer.log_every=2",
                     "trainer.batch_size=32", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(REQUIRED_KEYS) <= set(summary)
    assert summary["status"] == "completed" and summary["steps"] == 12
    assert summary["task"] == "fashion_mnist" and summary["model"] == "cnn"
    assert 0.0 <= summary["final"]["eval_acc"] <= 1.0
    for key in ("forward", "backward", "hvp"):
        assert summary["passes"][key] >= 0
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    assert {p.name for p in (run_dir / "plots").glob("*.png")} >= {"loss.png", "accuracy.png", "lr.png"}
    scalars = read_scalars(run_dir)
    for tag in ("train/loss", "train/lr", "lr/group0", "eval/loss", "eval/acc", "time/step_ms"):
        assert tag in scalars, tag
    assert [s for s, *_ in scalars["train/loss"]] == [2, 4, 6, 8, 10, 12]
    # TensorBoard sees exactly one run: no stray sub-folders next to the events file
    assert [p for p in (run_dir / "tb").iterdir() if p.is_dir()] == []


@pytest.mark.slow
def test_two_job_multirun(tmp_path):
    sweep = tmp_path / "sweep"
    proc = gen_train("-m", "task=logreg", "model=mlp", "lr=constant,cosine",
                     "trainer.max_steps=3", "trainer.progress=false",
                     f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summaries = sorted(sweep.glob("*/summary.json"))
    assert len(summaries) == 2
    assert {json.loads(p.read_text())["lr_method"] for p in summaries} == {"constant", "cosine"}


def test_good_command_lines_pass_the_preflight():
    assert check_command_line(["task=logreg", "model=mlp", "lr=cosine", "optimizer=sgd", "optimizer.lr=0.5"])
    assert check_command_line(["-m", "lr=constant,cosine", "seed=0,1,2"])
    assert not check_command_line(["--help"])  # Hydra's own business: nothing checked


@pytest.mark.slow
def test_missing_dataset_says_where_it_looked(tmp_path):
    proc = gen_train("task=mnist", f"task.data_root={tmp_path / 'nowhere'}", "task.download=false",
                     f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, timeout=120)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(tmp_path / "nowhere") in lines[0], proc.stderr


def test_wheel_ships_the_code_and_the_configs(tmp_path):
    """Every module of the library and the CLI, and every config, is in the wheel (an
    editable install finds a package missing from pyproject's list; a wheel does not)."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(REPO)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("genlr-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in (REPO / "src").rglob("*.py"):
        assert module.relative_to(REPO / "src").as_posix() in names, module
    for module in (REPO / "gen_cli").glob("*.py"):
        assert f"gen_cli/{module.name}" in names, module
    for yaml in (REPO / "conf").rglob("*.yaml"):
        assert f"gen_cli/conf/{yaml.relative_to(REPO / 'conf')}" in names, yaml


# -------------------------------------------------------------- Hydra's conventions
@pytest.mark.slow
def test_config_dir_with_the_users_own_options(tmp_path):
    """--config-dir DIR: the user's lr/mylr.yaml and task/tiny.yaml pass the pre-start
    check, compose (--cfg job) and train; a bad option in them is refused by name."""
    conf = tmp_path / "myconf"
    (conf / "lr").mkdir(parents=True)
    (conf / "task").mkdir()
    (conf / "lr" / "mylr.yaml").write_text("defaults:\n  - cosine\n  - _self_\nfinal_factor: 0.25\n")
    (conf / "task" / "tiny.yaml").write_text("name: logreg\ndim: 5\ntrain_samples: 256\n")
    args = ["--config-dir", str(conf), "lr=mylr", "task=tiny", "model=mlp", "trainer.max_steps=3"]
    check_command_line(args)
    shown = gen_train(*args, "--cfg", "job", cwd=tmp_path, timeout=120)
    assert shown.returncode == 0 and "final_factor: 0.25" in shown.stdout and "dim: 5" in shown.stdout
    run_dir = tmp_path / "run"
    proc = gen_train(*args, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["lr_method"] == "cosine" and summary["task"] == "logreg"
    (conf / "task" / "bad.yaml").write_text("name: logreg\ndimension: 5\n")
    with pytest.raises(UsageError, match="task.dimension: task=logreg has no such key; choose one of: dim, "):
        check_command_line(["--config-dir", str(conf), "task=bad", "model=mlp"])


@pytest.mark.slow
def test_a_run_logs_into_train_log_and_reports_progress_when_not_a_terminal(tmp_path):
    run_dir = tmp_path / "run"
    proc = gen_train("task=logreg", "model=mlp", "trainer.max_steps=20", f"hydra.run.dir={run_dir}",
                     cwd=tmp_path)  # stdout and stderr are pipes here
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split(":")[1].strip() for line in lines[:10]] == [
        f"step {s}/20" for s in (2, 4, 6, 8, 10, 12, 14, 16, 18, 20)]  # ten evaluations
    assert lines[-1].startswith("gen-train: completed 20 steps in ") and "eval acc" in lines[-1]
    log = (run_dir / "train.log").read_text().splitlines()
    assert len(log) == len(lines) and all(" INFO genlr.engine: " in line for line in log)
    assert log[-1].endswith(lines[-1].removeprefix("gen-train: "))


def test_help_lists_what_a_user_chooses_and_explains_the_trainer(tmp_path):
    proc = gen_train("--help", cwd=tmp_path)
    assert proc.returncode == 0
    assert "schema/" not in proc.stdout
    for group in ("task:", "model:", "optimizer:", "lr:", "experiment:"):
        assert f"\n  {group} " in proc.stdout, group
    assert "  eval_every (0): steps between evaluations; 0: 10 spread over the run" in proc.stdout
    assert "  resume_with_changes (False): resume although" in proc.stdout


@pytest.mark.parametrize("args", [["lr=nonexistent"], ["trainer.max_steps=abc"], ["--help"],
                                  ["optimizer=sgd", "optimizer.momentum=1.5"]])
def test_rejections_and_help_load_no_torch(args, tmp_path):
    """What start-up time is made of: torch, TensorBoard and matplotlib take seconds to
    import, and a command line is judged (and --help shown) without them."""
    code = ("import sys\nfrom gen_cli.train import main\nsys.argv = ['gen-train', *sys.argv[1:]]\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'torchvision', "
            "'tensorboard', 'matplotlib'}))")
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout + proc.stderr


def test_the_committed_option_table_is_the_signatures():
    """gen_cli/options.json (what the schemas are made from without torch) is what
    ``python -m gen_cli.schema`` writes from the registries' signatures today."""
    from gen_cli import schema

    assert schema.TABLE_FILE.read_text() == schema.table_text(schema.live_table()), \
        "a builder's options changed: run python -m gen_cli.schema and commit gen_cli/options.json"
    assert schema.option_table() == schema.live_table()


def test_a_method_missing_from_the_option_table_names_the_command_that_writes_it(tmp_path,
                                                                                 monkeypatch):
    """A new lr method takes its file, its registry line and its YAML file; until
    ``python -m gen_cli.schema`` writes its options into gen_cli/options.json, gen-train
    says to run it (not Hydra's "Could not load 'schema/lr/...'"), and then takes it."""
    from gen_cli import schema
    from genlr.methods import METHODS
    from genlr.methods.schedules import Constant

    class Throwaway(Constant):
        def __init__(self, optimizer, model=None, loss_fn=None, *, hold: float = 1.0,
                     **common) -> None:
            super().__init__(optimizer, model, loss_fn, **common)

    monkeypatch.setitem(METHODS, "throwaway", Throwaway)
    (tmp_path / "lr").mkdir()
    (tmp_path / "lr" / "throwaway.yaml").write_text(
        "defaults:\n  - /schema/lr/throwaway@_here_\n  - _self_\nname: throwaway\n")
    args = ["--config-dir", str(tmp_path), "lr=throwaway", "task=logreg", "model=mlp"]
    with pytest.raises(UsageError) as refused:
        check_command_line(args)
    assert str(refused.value) == schema.not_in_table("lr", "throwaway")
    assert "run python -m gen_cli.schema" in str(refused.value)

    table = tmp_path / "options.json"  # what the command writes, here in a scratch file
    table.write_text(schema.table_text(schema.live_table()))
    monkeypatch.setattr(schema, "TABLE_FILE", table)
    schema.option_table.cache_clear()
    try:
        register_schemas()
        assert check_command_line([*args, "lr.hold=0.5", f"hydra.run.dir={tmp_path}/run"])
    finally:
        schema.option_table.cache_clear()


def test_gen_cli_uses_public_modules_only():
    """No ``hydra._internal`` (nor any other private module) behind gen_cli's imports."""
    import ast

    for path in sorted((REPO / "gen_cli").glob("*.py")):
        tree = ast.parse(path.read_text())
        names = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                 for alias in node.names]
        names += [node.module for node in ast.walk(tree)
                  if isinstance(node, ast.ImportFrom) and node.module and not node.level]
        private = [name for name in names if any(part.startswith("_") for part in name.split("."))
                   and not name.startswith("__future__")]
        assert private == [], f"{path.name} imports {private}"


def test_gen_train_reads_hydras_flags():
    """The flags the check reads are Hydra's (its parser is private: read here, in a test)."""
    from hydra._internal.utils import get_args_parser

    from gen_cli.jobs import RUN_FLAGS, SHOW_FLAGS

    hydra_flags = {s for action in get_args_parser()._actions for s in action.option_strings}
    ours = {s for flags in (SHOW_FLAGS, RUN_FLAGS) for flag, short in flags.items()
            for s in (flag, short) if s}
    assert ours == hydra_flags


@pytest.mark.slow
def test_seeds_change_synthetic_runs(tmp_path):
    def final(seed: int, **task) -> float:
        cfg = composed([*QUICK, "task=quadratic", f"seed={seed}", "lr=constant",
                        *(f"task.{k}={v}" for k, v in task.items())])
        return train(spec_from_config(cfg), tmp_path / f"{seed}-{task}")["final"]["train_loss"]

    assert len({final(0), final(1), final(2)}) == 3
    assert final(0, start_noise=0.0) == final(1, start_noise=0.0)
    with pytest.raises(UsageError, match="seed=1: task=quadratic does not depend on the seed"):
        check_command_line(["task=quadratic", "task.start_noise=0", "seed=1"])


# ------------------------------------------------------------------ issue 28's rows
def test_the_folders_the_readme_writes_to_are_ignored_by_git():
    """``hydra.run.dir=runs/cosine`` (the README's) and gen-train's default outputs/."""
    import shutil

    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    readme = (REPO / "README.md").read_text() + (REPO / "docs" / "running.md").read_text()
    folders = set(re.findall(r"hydra\.(?:run|sweep)\.dir=([A-Za-z_][\w-]*)/", readme))  # relative ones
    assert "runs" in folders
    for folder in sorted(folders | {"outputs"}):
        proc = subprocess.run(["git", "check-ignore", "-q", f"{folder}/x/summary.json"], cwd=REPO)
        assert proc.returncode == 0, f"{folder}/ is not in .gitignore"


def test_under_torchrun_rank_0_reports_and_every_rank_tags_its_warnings(monkeypatch):
    """Each process torchrun starts logs the job: rank 0 alone says how training goes,
    every rank's warnings and errors carry its rank (the console's format of
    conf/hydra/job_logging/gen_train.yaml)."""
    import logging

    from gen_cli.train import RankFilter

    console = logging.Formatter("gen-train: %(rank_tag)s%(message)s")

    def seen(level: int) -> str | None:
        record = logging.LogRecord("genlr.engine", level, __file__, 1, "step 1/4", None, None)
        return console.format(record) if RankFilter().filter(record) else None

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    assert seen(logging.INFO) == "gen-train: step 1/4" and seen(logging.ERROR) == "gen-train: step 1/4"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert seen(logging.INFO) is None
    assert seen(logging.WARNING) == "gen-train: [rank 1] step 1/4"
    monkeypatch.setenv("RANK", "0")
    assert seen(logging.INFO) == "gen-train: step 1/4"
    assert seen(logging.ERROR) == "gen-train: [rank 0] step 1/4"


@pytest.mark.slow
def test_torchrun_prints_each_line_once_and_tags_each_ranks_refusal(tmp_path):
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    run_dir = tmp_path / "ddp"
    args = [torchrun, "--standalone", "--nproc_per_node=2", *GEN_TRAIN, "trainer.strategy=ddp",
            "trainer.device=cpu", "task=logreg", "model=mlp", "trainer.max_steps=4",
            "trainer.progress=false", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split(":")[1].strip() for line in lines[:-2]] == [f"step {s}/4" for s in (1, 2, 3, 4)]
    assert lines[-2].startswith("gen-train: lr ")  # the default GeN's account, once
    assert lines[-1].startswith("gen-train: completed 4 steps") and len(lines) == 6
    assert (run_dir / "train.log").read_text().count("completed 4 steps") == 1
    # again into the finished run's folder: each process refuses, saying which it is (the
    # first to refuse ends the others: torchrun stops them, maybe before they say it)
    proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    refusals = [line for line in proc.stderr.splitlines() if line.startswith("gen-train:")]
    assert proc.returncode != 0 and refusals, proc.stderr
    for line in refusals:
        assert re.match(rf"gen-train: \[rank [01]\] hydra.run.dir={run_dir} holds an earlier run "
                        r"\(completed at step 4\)", line), line


def test_a_gpu_size_on_the_cpu_says_so(tmp_path, fake_fashion_root, monkeypatch):
    """Issue 28: ``size=gpu`` on a CPU ran for minutes without a hint."""
    from test_rejections import in_process

    monkeypatch.setattr("genlr.engine.resolve_device", lambda name: __import__("torch").device("cpu"))
    args = ["workload=fmnist_linear", "size=gpu", f"task.data_root={fake_fashion_root[0]}",
            "trainer.max_steps=1", "trainer.batch_size=8", f"hydra.run.dir={tmp_path / 'run'}"]
    code, stderr = in_process(args, tmp_path)
    assert code == 0 and stderr.splitlines() == [
        "gen-train: size=gpu runs on the CPU here (no CUDA device): workload fmnist_linear at its "
        "GPU size (trainer.max_steps=1) is meant for a GPU and takes far longer than at size=cpu"]
    code, stderr = in_process([*args[:1], *args[2:-1], f"hydra.run.dir={tmp_path / 'cpu'}"], tmp_path)
    assert code == 0 and stderr == ""


@pytest.mark.parametrize("experiment", group_options("experiment"))
def test_an_experiments_own_sweep_folder_wins_over_train_yaml(experiment):
    """Issue 28: train.yaml's hydra.sweep.dir won over the experiment's, so its jobs went to
    outputs/multirun/ where gen-report (and the README) did not look. The slow set runs
    them: tests/test_documented_commands.py."""
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="gen_cli.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"experiment={experiment}"],
                      return_hydra_config=True)
    folder = experiment.removesuffix("_peers")  # (the peers' sweep sits beside the methods')
    assert cfg.hydra.sweep.dir.startswith(f"outputs/experiments/{folder}/"), cfg.hydra.sweep.dir


@pytest.mark.slow
def test_sigterm_while_the_curvature_pass_compiles_acts_within_seconds(tmp_path):
    """Issue 28: a SIGTERM during the first exact step's compile (a cold inductor cache)
    took minutes to act. gen-train says it is compiling; a SIGTERM then ends the run within
    10 s, interrupted, its summary and last good checkpoint written."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1",
           "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cold_cache"),
           "GENLR_TAYLOR_COMPILE": "1"}  # at once (a run this short would not pay for it)
    proc = subprocess.Popen([*GEN_TRAIN, "task=charlm", "task.max_chars=20000", "model=gpt",
                             "model.width=32", "model.depth=1", "lr=gen_exact",
                             "trainer.max_steps=50", "trainer.progress=false",
                             f"hydra.run.dir={run_dir}"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    try:
        for line in proc.stdout:
            if "compiling the curvature pass" in line:
                break
        else:
            pytest.fail("gen-train never said it was compiling")
        sent = time.time()
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)  # reading all it says, so that it never waits on a pipe
    finally:
        proc.kill()
    assert (run_dir / "summary.json").stat().st_mtime - sent < 10.0  # acted on at once
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and (run_dir / "checkpoints" / "last.pt").is_file()
