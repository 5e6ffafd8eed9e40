"""Bad command lines: each must exit with status 2 and exactly one line on stderr that
says the table's text (the key, the bad value, what is allowed or what to do), never a
traceback, and leave no run behind (no run folder, no summary.json). One table, run two
ways: every row in-process through gen-train's ``main`` in the default suite, and every row
through the real gen-train console script under ``-m slow`` (a few representative rows by
default)."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from conftest import write_mnist_layout
from gen_cli.train import main

GEN_TRAIN = str(Path(sys.executable).with_name("gen-train"))
BASE = ["task=logreg", "model=mlp", "trainer.max_steps=2"]  # quick, no data on disk
LONG_NAME = "a" * 300  # longer than any file system takes for one name

# (arguments, text the one line must contain: the key, the bad value and what is allowed or
# what to do, as the user reads them; a list of choices only up to its first names, so that a
# new option does not change the table). Flags come first (the overrides follow them, as
# Hydra reads them). In each row's scratch folder {tmp}: `a_file` (empty) and `binary` (bytes).
TABLE: list[tuple[list[str], str]] = [
    # config groups: unknown options
    (["lr=nonexistent"], "lr='nonexistent': choose one of: constant, cosine, "),
    (["task=imagenet"], "task='imagenet': choose one of: beale, charlm, "),
    (["model=transformer9"], "model='transformer9': choose one of: cnn, coords, "),
    (["optimizer=lamb"], "optimizer='lamb': choose one of: adagrad, adam, "),
    (["trainer=fast"], "trainer='fast': choose one of: default"),
    (["experiment=nope"], "experiment='nope': choose one of: lr_sensitivity, method_comparison, "),
    (["hydra/launcher=nope"], "hydra/launcher='nope': choose one of: basic, joblib, "),
    (["lr="], "lr='': choose one of: constant, cosine, "),
    (["lr=cösine"], "cannot parse 'lr=cösine': token recognition error at: 'ö' (write "
                    "key=value; quote a value with special characters: key='a value')"),
    (["size=gpu"], "size=gpu sizes a workload: add workload=<name> (see gen-train --help)"),
    (["workload=cifar10_resnet18", "size=cpu"], "size='cpu': choose one of: gpu"),
    (["workload=fmnist_cnn", "size=tpu"], "size='tpu': choose one of: cpu, gpu"),
    (["workload=nope"], "workload='nope': choose one of: charlm_gpt, cifar10_resnet18, "),
    (["workload=fmnist_linear", "optimizer=prodigy"],
     "optimizer=prodigy does not fit workload=fmnist_linear: the workload sets optimizer.momentum "
     "for its optimizer=sgd, an option optimizer=prodigy does not have; drop optimizer=prodigy, "
     "or drop workload= and choose the settings yourself"),
    (["workload=charlm_gpt", "task=mnist"],
     "task=mnist does not fit workload=charlm_gpt: the workload sets task.max_chars for its "
     "task=charlm, an option task=mnist does not have; drop task=mnist, or drop workload= and "
     "choose the settings yourself"),
    (["lr=[constant,cosine]"], "lr=[constant,cosine]: lr is a config group and takes one option; "
                               "to run each as its own job, sweep: gen-train -m lr=constant,cosine"),
    (["optimizer=[sgd]"], "optimizer=[sgd]: optimizer is a config group and takes one option; to "
                         "run each as its own job, sweep: gen-train -m optimizer=sgd"),
    # trainer settings
    (["trainer.max_steps=abc"], "trainer.max_steps: Value 'abc' of type 'str' could not be converted to Integer"),
    (["trainer.max_steps=2.5"],
     "trainer.max_steps: Value '2.5' of type 'float' could not be converted to Integer"),
    (["trainer.max_steps=0"], "trainer.max_steps=0: must be >= 1"),
    (["trainer.compile=maybe"], "trainer.compile: Value 'maybe' is not a valid bool (type str)"),
    (["trainer.batch_size=0"], "trainer.batch_size=0: must be >= 1"),
    (["trainer.batch_size=-4"], "trainer.batch_size=-4: must be >= 1"),
    (["trainer.batch_size=100000"],
     "trainer.batch_size=100000: task logreg has 4096 training examples; choose at most 4096"),
    (["task.train_samples=100", "trainer.batch_size=101"],
     "trainer.batch_size=101: task logreg has 100 training examples; choose at most 100"),
    # (a corpus of 10000 characters: the default one, this Python's standard library, and the
    # count of its windows change with the Python)
    (["task=charlm", "model=gpt", "task.max_chars=10000", "trainer.batch_size=100000"],
     "trainer.batch_size=100000: task charlm has 140 training windows of block_size + 1 = 65 "
     "characters; choose at most 140"),
    (["trainer.overwrite=true", "trainer.resume=auto"],
     "trainer.overwrite=true and trainer.resume=auto: the one starts over, the other "
     "continues; give one of them"),
    (["trainer.eval_batch_size=0"], "trainer.eval_batch_size=0: must be >= 1"),
    (["trainer.epochs=0"], "trainer.epochs=0: must be >= 1"),
    (["trainer.log_every=0"], "trainer.log_every=0: must be >= 1"),
    (["trainer.eval_every=-1"], "trainer.eval_every=-1: must be >= 0"),
    (["trainer.checkpoint_every=-5"], "trainer.checkpoint_every=-5: must be >= 0"),
    (["trainer.profile_every=-1"], "trainer.profile_every=-1: must be >= 0"),
    (["trainer.amp=fp8"], "trainer.amp='fp8': choose one of: off, bf16, fp16"),
    (["trainer.device=tpu"], "trainer.device='tpu': choose one of: auto, cpu, cuda"),
    (["trainer.strategy=fsdp"], "trainer.strategy='fsdp': choose one of: single, ddp"),
    (["trainer.strategy=ddp"], "trainer.strategy=ddp needs torchrun: torchrun --nproc_per_node=N "
                              "$(which gen-train) trainer.strategy=ddp ..."),
    (["trainer.foo=1"], "trainer.foo: no such key; choose one of: device, strategy, "),
    (["trainer.batch_sze=4"], "trainer.batch_sze: no such key; choose one of: device, strategy, "),
    (["+trainer.foo=1"], "trainer.foo: no such key; choose one of: device, strategy, "),
    (["~trainer.max_steps"], "~trainer.max_steps: a setting cannot be removed; give it a value "
                            "instead (trainer.max_steps=...)"),
    (["trainer.resume={tmp}/missing"], "trainer.resume: no checkpoint at {tmp}/missing"),
    (["trainer.resume=true"], "trainer.resume: no checkpoint at {tmp}/run/checkpoints/last.pt"),
    # the seed
    (["seed=abc"], "seed: Value 'abc' of type 'str' could not be converted to Integer"),
    (["seed=1.5"], "seed: Value '1.5' of type 'float' could not be converted to Integer"),
    (["seed=99999999999999999999"],
     "seed=99999999999999999999: out of range; choose an integer in [-2**63, 2**64)"),
    (["seed=null"], "seed: field 'seed' is not Optional"),
    (["task=rosenbrock", "model=coords", "seed=3"],
     "seed=3: task=rosenbrock does not depend on the seed (a fixed start and no data); set "
     "task.start_noise > 0 to draw the start from the seed"),
    # optimizer options
    (["optimizer.lr=abc"], "optimizer.lr: Value 'abc' of type 'str' could not be converted to Float"),
    (["optimizer.lr=inf"], "optimizer.lr=inf: not a finite number"),
    (["optimizer.lr=1e400"], "optimizer.lr=inf: not a finite number"),
    (["optimizer.lr=nan"], "optimizer.lr=nan: not a finite number"),
    (["optimizer.lr=-1"], "optimizer.lr=-1.0: must be >= 0"),
    (["optimizer.betas=[0.9]"], "optimizer.betas=[0.9]: needs 2 values, got 1"),
    (["optimizer.betas=[0.9,0.99,0.999]"], "optimizer.betas=[0.9, 0.99, 0.999]: needs 2 values, got 3"),
    (["optimizer.betas=0.9"],
     "optimizer.betas: Invalid value assigned: float is not a ListConfig, list or tuple."),
    # ... each within what its optimizer's maths needs (genlr.options.Range in the signature)
    (["optimizer.betas=[0.9,2]"], "optimizer.betas=[0.9, 2.0]: each value must be in [0, 1)"),
    (["optimizer.betas=[1.0,0.999]"], "optimizer.betas=[1.0, 0.999]: each value must be in [0, 1)"),
    (["optimizer.weight_decay=-0.1"], "optimizer.weight_decay=-0.1: must be >= 0"),
    (["optimizer.eps=-1"], "optimizer.eps=-1.0: must be > 0"),
    (["optimizer.eps=0"], "optimizer.eps=0.0: must be > 0"),
    (["optimizer=adam", "optimizer.eps=0"], "optimizer.eps=0.0: must be > 0"),
    (["optimizer=sgd", "optimizer.momentum=-1"], "optimizer.momentum=-1.0: must be in [0, 1)"),
    (["optimizer=sgd", "optimizer.momentum=1.5"], "optimizer.momentum=1.5: must be in [0, 1)"),
    (["optimizer=sgd", "optimizer.momentum=1"], "optimizer.momentum=1.0: must be in [0, 1)"),
    (["optimizer=sgd", "optimizer.dampening=1"], "optimizer.dampening=1.0: must be in [0, 1)"),
    (["optimizer=sgd", "optimizer.lr=-0.1"], "optimizer.lr=-0.1: must be >= 0"),
    (["optimizer=sgd", "optimizer.nesterov=true", "optimizer.momentum=0"],
     "optimizer.nesterov=true: needs optimizer.momentum > 0 and optimizer.dampening=0 (got "
     "momentum 0.0, dampening 0.0)"),
    (["optimizer=sgd", "optimizer.nesterov=true", "optimizer.dampening=0.5"],
     "optimizer.nesterov=true: needs optimizer.momentum > 0 and optimizer.dampening=0 (got "
     "momentum 0.9, dampening 0.5)"),
    (["optimizer=rmsprop", "optimizer.alpha=1"], "optimizer.alpha=1.0: must be in [0, 1)"),
    (["optimizer=rmsprop", "optimizer.momentum=1.5"], "optimizer.momentum=1.5: must be in [0, 1)"),
    (["optimizer=rmsprop", "optimizer.eps=0"], "optimizer.eps=0.0: must be > 0"),
    (["optimizer=adagrad", "optimizer.lr_decay=-1"], "optimizer.lr_decay=-1.0: must be >= 0"),
    (["optimizer=adagrad", "optimizer.initial_accumulator_value=-1"],
     "optimizer.initial_accumulator_value=-1.0: must be >= 0"),
    (["optimizer=adagrad", "optimizer.eps=0"], "optimizer.eps=0.0: must be > 0"),
    (["optimizer=prodigy", "lr=constant", "optimizer.lr=0"], "optimizer.lr=0.0: must be > 0"),
    (["optimizer=prodigy", "lr=constant", "optimizer.d0=0"], "optimizer.d0=0.0: must be > 0"),
    (["optimizer=prodigy", "lr=constant", "optimizer.beta3=1"], "optimizer.beta3=1.0: must be in [0, 1)"),
    (["optimizer=prodigy", "lr=constant", "optimizer.growth_rate=0.5"],
     "optimizer.growth_rate=0.5: must be >= 1"),
    (["optimizer=prodigy", "lr=constant", "optimizer.slice_p=0"], "optimizer.slice_p=0: must be >= 1"),
    (["optimizer=schedulefree_sgd", "lr=constant", "optimizer.momentum=0"],
     "optimizer.momentum=0.0: must be in (0, 1)"),
    (["optimizer=schedulefree_adamw", "lr=constant", "optimizer.warmup_steps=-1"],
     "optimizer.warmup_steps=-1: must be >= 0"),
    (["optimizer=dog", "lr=constant", "optimizer.reps_rel=0"], "optimizer.reps_rel=0.0: must be > 0"),
    (["optimizer=ldog", "lr=constant", "optimizer.init_eta=-1"], "optimizer.init_eta=-1.0: must be > 0"),
    (["optimizer=dog", "lr=constant", "optimizer.averager_gamma=-1"],
     "optimizer.averager_gamma=-1.0: must be >= 0"),
    (["optimizer=dadapt_adam", "lr=constant", "optimizer.growth_rate=0"],
     "optimizer.growth_rate=0.0: must be >= 1"),
    (["optimizer=dadapt_sgd", "lr=constant", "optimizer.momentum=1"], "optimizer.momentum=1.0: must be in [0, 1)"),
    (["optimizer=gen_optim_sgd", "lr=constant", "optimizer.every=0"], "optimizer.every=0: must be >= 1"),
    (["optimizer=gen_optim_adamw", "lr=constant", "optimizer.scale=0"], "optimizer.scale=0.0: must be > 0"),
    (["optimizer.foo=1"],
     "optimizer.foo: optimizer=adamw has no such key; choose one of: lr, betas, "),
    (["+optimizer.foo=1"],
     "optimizer.foo: optimizer=adamw has no such key; choose one of: lr, betas, "),
    # lr-method options
    (["lr.foo=1"], "lr.foo: lr=gen_parabola has no such key; choose one of: rule, window, "),
    (["+lr.foo=1"], "lr.foo: lr=gen_parabola has no such key; choose one of: rule, window, "),
    (["lr=constant", "lr.foo=1"], "lr.foo: lr=constant has no such key; it has none"),
    (["lr.r2_min=2"], "lr.r2_min=2.0 is read only with more than three points"),
    (["lr.scale=foo"], "lr.scale='foo': choose one of: constant, linear, cosine"),
    (["lr.every=0"], "lr=gen_parabola: every must be >= 1, got 0"),
    (["lr.smoothing=1.5"], "lr.smoothing=1.5 is read only with rule='line_search'"),
    (["lr.points=[0,1]"],
     "lr=gen_parabola: points must be at least three distinct values, got [0.0, 1.0]"),
    (["lr=cosine", "lr.final_factor=2"], "lr=cosine: final_factor must be a fraction in [0, 1], got 2.0"),
    (["lr=cosine", "lr.final_factor=abc"],
     "lr.final_factor: Value 'abc' of type 'str' could not be converted to Float"),
    (["lr=newt", "lr.approx=exact"], "lr.approx='exact': choose one of: secant, taylor"),
    (["lr=step", "lr.milestones=abc"],
     "lr.milestones: Invalid value assigned: str is not a ListConfig, list or tuple."),
    (["optimizer=prodigy", "lr=gen_parabola"],
     "lr=gen_parabola: ParabolaGeN rescales the optimizer's step, which needs an update linear in "
     "lr; Prodigy is not (use one of: SGD, Adam, AdamW, "),
    (["lr=onecycle", "lr.anneal=cosine"], "lr.anneal='cosine': choose one of: cos, linear"),
    (["lr=hypergradient", "lr.rule=exp"], "lr.rule='exp': choose one of: additive, multiplicative"),
    (["optimizer=gen_optim_adamw", "task=quadratic", "model=coords", "lr=constant"],
     "optimizer=gen_optim_adamw: the authors' GeN (gen-optim) fits a cross-entropy loss; task "
     "quadratic is not a classification task"),
    (["optimizer=gen_optim_adamw", "lr=gen_parabola"],
     "lr=gen_parabola: ParabolaGeN rescales the optimizer's step, which needs an update linear in "
     "lr; GeNReference is not (use one of: SGD, Adam, AdamW, "),
    (["optimizer=gen_optim_sgd", "lr=cosine"],
     "optimizer=gen_optim_sgd: it sets its own learning rate: use lr=constant, not lr=cosine"),
    (["optimizer=gen_optim_adamw", "lr=constant", "trainer.strategy=ddp"],
     "optimizer=gen_optim_adamw: it runs in one process: trainer.strategy=ddp is not for it"),
    (["lr=newt", "optimizer.lr=0"], "optimizer.lr=0.0: Newt rescales the optimizer's step, which is "
                                   "zero at lr 0; start from a positive lr"),
    (["lr=gen_exact", "optimizer.lr=0"], "optimizer.lr=0.0: ExactGeN rescales the optimizer's step, "
                                        "which is zero at lr 0; start from a positive lr"),
    # tasks and models
    (["task=quadratic", "model=cnn"], "model=cnn: model 'cnn' needs images (channels, height, width); "
                                     "task 'quadratic' has coordinates (use model=coords)"),
    (["model=coords"], "model=coords: model 'coords' needs a coordinate problem (quadratic, "
                        "rosenbrock, beale); task 'logreg' has data (use model=linear)"),
    (["model.foo=1"],
     "model.foo: model=mlp has no such key; choose one of: hidden, activation, dropout"),
    (["task=fashion_mnist", "model=cnn", "task.train_size=-10"],
     "task=fashion_mnist: train_size must be a positive number of examples (or null for all of "
     "them), got -10"),
    (["task=fashion_mnist", "model=cnn", "task.train_size=0"],
     "task=fashion_mnist: train_size must be a positive number of examples (or null for all of "
     "them), got 0"),
    (["model.activation=swish"], "model.activation='swish': choose one of: relu, gelu, tanh, silu"),
    (["task=mnist", "model=cnn", "task.download=false", "task.data_root={tmp}/nowhere"],
     "task.data_root={tmp}/nowhere: no mnist data there (MNIST/raw/); put the files there "
     "(torchvision's layout), or set task.download=true to download them"),
    (["task=fashion_mnist", "model=cnn", "task.data_root={tmp}/a_file"],
     "task.data_root={tmp}/a_file: it is a file; give the folder that holds the fashion_mnist "
     "data"),
    (["task=mnist", "model=cnn", "task.data_root="],  # (the default folder is this machine's)
     "task.data_root='': no folder; give the folder that holds the data, or null for the default ("),
    (["task=charlm", "model=gpt", "task.path={tmp}/binary"],
     "task.path={tmp}/binary: not UTF-8 text (byte 128: invalid start byte); give a text file"),
    (["task=charlm", "model=gpt", "task.path={tmp}/missing"],
     "task charlm: task.path={tmp}/missing is not a file"),
    (["task=quadratic", "model=coords", "task.dim=0"],
     "task=quadratic: quadratic needs dim >= 1 and condition >= 1, got dim=0, condition=100.0"),
    (["task=quadratic", "model=coords", "task.condition=0.5"],
     "task=quadratic: quadratic needs dim >= 1 and condition >= 1, got dim=20, condition=0.5"),
    (["task=quadratic", "model=coords", "task.steps_per_epoch=0"],
     "task=quadratic: steps_per_epoch must be at least 1, got 0"),
    (["task=quadratic", "model=coords", "task.start_noise=-1"],
     "task=quadratic: start_noise must be >= 0, got -1.0"),
    (["+foo=1"], "foo: no such key; choose one of: task, model, "),
    (["foo=1"], "foo: no such key; choose one of: task, model, "),
    # Hydra's settings, sweeps and flags
    (["hydra.run.dir="], "hydra.run.dir is empty; give the run a folder (hydra.run.dir=runs/NAME)"),
    (["hydra.run.dir=/proc/x"], "hydra.run.dir=/proc/x: cannot create folders in /proc"),
    (["hydra.run.dir={tmp}/a_file/run"], "hydra.run.dir={tmp}/a_file/run: {tmp}/a_file is not a directory"),
    ([f"hydra.run.dir={{tmp}}/{LONG_NAME}/run"],
     f"hydra.run.dir={{tmp}}/{LONG_NAME}/run: the folder name {'a' * 20}... is 300 bytes long; "
     "the file system takes at most 255"),
    (["-m", f"hydra.sweep.subdir={LONG_NAME}"],
     f"hydra.sweep.subdir={{tmp}}/sweep/{LONG_NAME}: the folder name {'a' * 20}... is 300 bytes "
     "long; the file system takes at most 255"),
    (["hydra.job.chdir=${{oops}}"], "hydra.job.chdir: Interpolation key 'oops' not found"),
    (["optimizer.lr=${{now:}}"], "optimizer.lr: TypeError raised while resolving interpolation: "
                                "setup_globals.<locals>.<lambda>() missing 1 required positional "
                                "argument: 'pattern'"),
    (["hydra.foo=1"], "hydra.foo: no such key; choose one of: defaults, mode, "),
    (["lr=constant,cosine"], "'lr=constant,cosine' sweeps over several values: add -m to run them "
                            "all, or write a list as key=[a,b] or a string as key='a,b'"),
    (["-m", "lr=constant,nope"], "lr='nope': choose one of: constant, cosine, "),
    (["-m", "seed=0,1", "optimizer=sgd,adamw", "optimizer.lr=-1"], "optimizer.lr=-1.0: must be >= 0"),
    (["-m", "optimizer.lr=0.1,-1"], "optimizer.lr=-1.0: must be >= 0"),
    (["-m", "hydra.sweep.dir="],
     "hydra.sweep.dir is empty; give the run a folder (hydra.sweep.dir=runs/NAME)"),
    (["--foo"], "--foo: not a flag of gen-train (see gen-train --help)"),
    (["--run", "--multirun"], "--run and --multirun: give one of them (a sweep runs with -m)"),
    (["--config-dir", "{tmp}/missing"], "--config-dir {tmp}/missing: no such folder"),
    (["--config-path", "{tmp}/missing"], "--config-path {tmp}/missing --config-name train: Primary config directory not found"),
    (["--config-name", "nope"], "--config-path pkg://gen_cli.conf --config-name nope: Cannot find "
                               "primary config 'nope'. Check that it's in your config search path."),
    (["x=["], "cannot parse 'x=[': no viable alternative at input '[' (write key=value; quote a "
              "value with special characters: key='a value')"),
]
if shutil.which("sbatch") is None:
    TABLE.append((["-m", "hydra/launcher=slurm"],
                  "hydra/launcher=slurm: SLURM's sbatch is not on PATH (run from a SLURM login node, "
                  "or use hydra/launcher=submitit_local or joblib)"))
if not torch.cuda.is_available():
    TABLE.append((["trainer.device=cuda"],
                  "trainer.device=cuda but no CUDA device is available (use auto or cpu)"))

DEFAULT_ROWS = ["lr=nonexistent", "trainer.max_steps=abc", "optimizer.betas=[0.9]",
                "seed=99999999999999999999", "task=quadratic", "hydra.run.dir=/proc/x"]
# A line led by an exception's class (DatasetNotFoundError: ...); a cause in parentheses may
# name its type ("does not fit this run (KeyError: 'scheduler')").
CLASS_NAME = re.compile(r"^gen-train: [A-Z]\w*(Error|Exception):")


def scratch(tmp: Path) -> Path:
    """A row's own folder, holding what the table's {tmp} rows point at."""
    case = Path(tempfile.mkdtemp(dir=tmp))
    (case / "a_file").write_text("")
    (case / "binary").write_bytes(bytes(range(256)) * 8)
    return case


def command(args: list[str], case: Path) -> list[str]:
    """The row's arguments with the base overrides and run folders inside ``case``."""
    args = [a.format(tmp=case) for a in args]
    places = [f"{key}={case / folder}" for key, folder in (("hydra.run.dir", "run"),
                                                           ("hydra.sweep.dir", "sweep"))
              if not any(a.startswith(f"{key}=") for a in args)]
    flags = list(args[:next((i for i, a in enumerate(args) if "=" in a), len(args))])
    return [*flags, *BASE, *places, *args[len(flags):]]


def in_process(args: list[str], case: Path) -> tuple[int, str]:
    """gen-train's ``main`` in this process: its exit status and stderr."""
    argv, cwd, err = sys.argv, os.getcwd(), io.StringIO()
    sys.argv = ["gen-train", *args]
    os.chdir(case)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            main()
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    finally:
        sys.argv = argv
        os.chdir(cwd)
    return code, err.getvalue()


def gen_train(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """The gen-train console script in its own process."""
    return subprocess.run([GEN_TRAIN, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HYDRA_FULL_ERROR": "0"})


def real_cli(args: list[str], case: Path) -> tuple[int, str]:
    proc = gen_train(args, case)
    return proc.returncode, proc.stderr


def problems(args: list[str], expected: str, tmp: Path, run=real_cli) -> list[str]:
    """What is wrong with how gen-train refused ``args`` (nothing: an empty list)."""
    case = scratch(tmp)
    code, stderr = run(command(args, case), case)
    lines = [line for line in stderr.splitlines() if line.strip()]
    expected = expected.format(tmp=case)
    found = []
    if code != 2:
        found.append(f"exit status {code}")
    if "Traceback" in stderr:
        found.append("a traceback")
    if len(lines) != 1:
        found.append(f"{len(lines)} lines on stderr")
    elif not lines[0].startswith("gen-train: ") or expected not in lines[0]:
        found.append(f"the line does not say {expected!r}")
    elif CLASS_NAME.search(lines[0]):
        found.append("an exception's class name")
    if list(case.rglob("summary.json")) or (case / "run").exists() or (case / "sweep").exists():
        found.append("a run folder was left behind")
    return [f"{args}: {', '.join(found)}: {stderr.strip()!r}"] if found else []


@pytest.mark.parametrize("args, expected", TABLE)
def test_every_bad_command_line_is_refused_in_one_line(args, expected, tmp_path):
    assert problems(args, expected, tmp_path, run=in_process) == []


@pytest.mark.parametrize("row", DEFAULT_ROWS)
def test_representative_rows_through_the_real_cli(row, tmp_path):
    args, expected = next(r for r in TABLE if r[0][0] == row)
    assert problems(args, expected, tmp_path) == []


@pytest.mark.parametrize("group, name, options", [
    ("optimizer", "adamw", {"betas": [0.9]}),
    ("optimizer", "adamw", {"lr": float("nan")}),
    ("optimizer", "adamw", {"foo": 1}),
    ("optimizer", "sgd", {"momentum": 1.5}),
    ("optimizer", "adamw", {"eps": 0.0}),
    ("optimizer", "adamw", {"betas": [0.9, 1.0]}),
    ("optimizer", "sgd", {"nesterov": "true", "momentum": 0.0}),
    ("task", "charlm", {"foo": 1}),
])
def test_the_library_refuses_an_option_in_the_command_lines_words(group, name, options, tmp_path):
    """``build_optimizer("adamw", params, betas=[0.9])`` raises the line gen-train prints."""
    from genlr.models import build_model
    from genlr.optimizers import build_optimizer
    from genlr.tasks import build_task

    typed = {key: value == "true" if value == "true" else value for key, value in options.items()}
    build = {"optimizer": lambda: build_optimizer(name, build_model("linear", build_task("logreg")).parameters(), **typed),
             "task": lambda: build_task(name, **typed)}[group]
    with pytest.raises(ValueError) as refused:
        build()
    overrides = [f"{group}={name}", *(f"{group}.{key}={value}" for key, value in options.items())]
    code, stderr = in_process(command(overrides, tmp_path), tmp_path)
    assert code == 2 and stderr.strip() == f"gen-train: {refused.value}"


def test_a_workload_with_a_component_it_does_not_fit_is_named(tmp_path):
    """``workload=fmnist_cnn task=charlm``: the line names the workload and what it sets
    (the table's rows carry task=logreg model=mlp, which would hide it)."""
    code, stderr = in_process(["workload=fmnist_cnn", "task=charlm", f"hydra.run.dir={tmp_path / 'run'}"],
                              tmp_path)
    assert code == 2 and stderr.splitlines() == [
        "gen-train: task=charlm does not fit workload=fmnist_cnn, which sets model=cnn: model "
        "'cnn' needs images (channels, height, width); task 'charlm' has inputs of shape (64,) "
        "(use model=gpt)"]
    assert not (tmp_path / "run").exists()


def test_a_batch_larger_than_the_images_is_refused_before_they_load(tmp_path, monkeypatch):
    """The image tasks count their training set from the labels' IDX header (8 bytes)."""
    write_mnist_layout(tmp_path, "MNIST")  # 64 training images

    def read_idx(path):
        pytest.fail(f"{path} was read")

    monkeypatch.setattr("genlr.tasks.images.read_idx", read_idx)
    monkeypatch.setattr("torchvision.datasets.MNIST.__init__", read_idx)
    code, stderr = in_process(["task=mnist", "model=cnn", f"task.data_root={tmp_path}",
                               "trainer.batch_size=65", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert code == 2 and stderr.splitlines() == [
        "gen-train: trainer.batch_size=65: task mnist has 64 training examples; choose at most 64"]
    assert not (tmp_path / "run").exists()


def test_a_failed_download_says_what_to_do_and_leaves_no_folder(tmp_path, monkeypatch):
    """Issue 28: cut at 300 characters, the line lost its end ("...into tas..."), and a
    task.data_root given was not named. A download that fails (here with a long message)
    leaves no empty folders behind either."""
    import torchvision

    def offline(self, root, *args, **kwargs):
        os.makedirs(os.path.join(root, "MNIST", "raw"), exist_ok=True)  # as torchvision does
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried "
                           + "https://mirror.example/mnist/, " * 20 + "got: <urlopen error>")

    monkeypatch.setattr(torchvision.datasets.MNIST, "__init__", offline)
    monkeypatch.setenv("GENLR_DATA", str(tmp_path / "cache"))
    root = tmp_path / "new" / "dir"
    for args, start, end in [
            ([f"task.data_root={root}"], f"gen-train: task.data_root={root}: no mnist data there "
                                          "(MNIST/raw/), and the download into it failed (Error downloading",
             "; put the files there (torchvision's layout), or check the network"),
            ([], f"gen-train: mnist: not found in {tmp_path}/cache/MNIST/raw, and the download",
             "; put it in torchvision's layout (DIR/MNIST/raw/) into task.data_root=DIR")]:
        code, stderr = in_process(["task=mnist", "model=cnn", *args,
                                   f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
        (line,) = stderr.splitlines()
        assert code == 2 and line.startswith(start) and line.endswith(end), line
    assert not (tmp_path / "new").exists() and not (tmp_path / "cache").exists()


def test_a_truncated_checkpoint_is_refused_with_how_to_go_on(tmp_path):
    torch.save({"model": {"w": torch.zeros(10_000)}}, tmp_path / "whole.pt")
    data = (tmp_path / "whole.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    code, stderr = in_process([*BASE, f"trainer.resume={tmp_path / 'cut.pt'}",
                               f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    (line,) = stderr.splitlines()  # torch's reason between, in its first sentence
    assert code == 2 and line.startswith(
        f"gen-train: trainer.resume: {tmp_path / 'cut.pt'} is not a readable checkpoint (")
    assert line.endswith("); resume from another checkpoint, or start the run over: "
                         "trainer.overwrite=true instead of trainer.resume")


def test_data_found_corrupt_when_read_fails_its_run_in_one_line(tmp_path):
    """A file cut short is there (the check passes) and fails as the job reads it: the run
    ends with status 1 and one line that says what to do."""
    write_mnist_layout(tmp_path, "MNIST")
    images = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:1000])
    code, stderr = in_process(["task=mnist", "model=cnn", f"task.data_root={tmp_path}",
                               "task.download=false", "trainer.max_steps=2",
                               "trainer.batch_size=8", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    lines = stderr.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "the files in" in lines[0], stderr
    assert "truncated or corrupt" in lines[0] and not CLASS_NAME.search(lines[0]), stderr


@pytest.mark.slow
def test_every_row_through_the_real_cli(tmp_path):
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


# ---------------------------------------------------------- a folder that holds a run
def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder``: its bytes and modification time."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_rerun_into_a_finished_runs_folder_is_refused_and_changes_nothing(tmp_path):
    """Issue 28: a second run into the folder of a finished run replaced its summary.json
    and last.pt and mixed two runs' TensorBoard events. Refused in one line naming the
    ways on, nothing written; trainer.overwrite=true starts clean; resume=auto skips."""
    run = tmp_path / "run"
    args = [*BASE, f"hydra.run.dir={run}"]
    assert in_process(args, tmp_path)[0] == 0
    before = snapshot(run)
    code, stderr = in_process(args, tmp_path)
    assert code == 2 and stderr.splitlines() == [
        f"gen-train: hydra.run.dir={run} holds an earlier run (completed at step 2); continue it "
        "with trainer.resume=true, start over with trainer.overwrite=true (removes its outputs), "
        "or give this run another folder"]
    assert snapshot(run) == before
    # the README's own example: hydra.run.dir=. where a summary.json is
    code, stderr = in_process([*BASE, "hydra.run.dir=."], run)
    assert code == 2 and "hydra.run.dir=. holds an earlier run" in stderr
    assert snapshot(run) == before

    code, _ = in_process([*args, "trainer.resume=auto"], tmp_path)  # a finished run: given back
    finished = json.loads(before["summary.json"][0])
    again = json.loads((run / "summary.json").read_text())
    assert code == 0 and (again["steps"], again["final"]) == (finished["steps"], finished["final"])

    (run / "notes.txt").write_text("mine")
    code, _ = in_process([*BASE[:2], "trainer.max_steps=3", "trainer.overwrite=true",
                          f"hydra.run.dir={run}"], tmp_path)
    assert code == 0
    assert json.loads((run / "summary.json").read_text())["steps"] == 3
    assert len(list((run / "tb").iterdir())) == 1  # one run's events, not two
    log = (run / "train.log").read_text()
    assert "step 3/3" in log and "step 2/2" not in log  # the earlier run's log went too
    assert (run / "notes.txt").read_text() == "mine"  # what is not a run's output stays


def test_a_sweep_into_an_earlier_sweeps_folder_is_refused_unless_continued_or_overwritten(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *BASE, "lr=constant,cosine", f"hydra.sweep.dir={sweep}"]
    assert in_process(args, tmp_path)[0] == 0
    before = snapshot(sweep)
    code, stderr = in_process(["-m", *BASE, "lr=newt", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert code == 2 and stderr.splitlines() == [
        f"gen-train: hydra.sweep.dir={sweep} holds 2 run(s) of an earlier sweep (0, 1); continue "
        "that sweep with trainer.resume=auto, start over with trainer.overwrite=true (removes "
        "their outputs), or give this sweep another folder"]
    assert snapshot(sweep) == before
    # a sweep into the parent of another sweep's folders uses other folders (0, 1, ...)
    assert in_process(["-m", *BASE, "lr=constant", f"hydra.sweep.dir={tmp_path}"], tmp_path)[0] == 0

    assert in_process([*args, "trainer.resume=auto"], tmp_path)[0] == 0  # gen-suite's reruns
    for job in ("0", "1"):
        finished = json.loads(before[f"{job}/summary.json"][0])
        assert json.loads((sweep / job / "summary.json").read_text())["final"] == finished["final"]

    code, _ = in_process(["-m", *BASE, "lr=newt", "trainer.overwrite=true",
                          f"hydra.sweep.dir={sweep}"], tmp_path)
    assert code == 0
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "multirun.yaml"]  # job 1 is gone
    assert json.loads((sweep / "0" / "summary.json").read_text())["lr_method"] == "newt"


def test_under_torchrun_a_refusal_names_its_rank_and_the_batch_must_split(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, stderr = in_process([*BASE, "trainer.strategy=ddp", "trainer.batch_size=63",
                               f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert code == 2 and stderr.splitlines() == [
        "gen-train: [rank 1] trainer.batch_size=63: the global batch is split across the 2 "
        "processes; choose a multiple of 2"]
