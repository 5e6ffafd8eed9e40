"""The workload suite (conf/workload/): each workload composes at each of its sizes, trains a
few steps on small fake data, and its GPU size is reached from the CPU one by `size=gpu`."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from gen_cli.jobs import spec_from_config
from gen_cli.preflight import check_command_line
from gen_cli.schema import register_schemas
from gen_cli.suite import HELDOUT_WORKLOADS
from genlr.engine import train

REPO = Path(__file__).resolve().parents[1]
WORKLOADS = sorted(p.stem for p in (REPO / "conf" / "workload").glob("*.yaml"))
SIZES = {w: sorted(p.stem.removeprefix(f"{w}_")
                   for p in (REPO / "conf" / "workload" / "sizes").glob(f"{w}_*.yaml"))
         for w in WORKLOADS}
TINY = ["trainer.max_steps=2", "trainer.batch_size=8", "trainer.eval_batch_size=512",
        "trainer.eval_every=1", "trainer.progress=false", "trainer.plots=false",
        "trainer.device=cpu"]

register_schemas()


def composed(overrides: list[str]):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="gen_cli.conf", version_base="1.3"):
            return compose(config_name="train", overrides=overrides)
    finally:
        GlobalHydra.instance().clear()


def budget(cfg) -> float:
    """Training examples a run sees (max_steps, else epochs over the 60k/50k training set)."""
    trainer = cfg.trainer
    if trainer.max_steps is not None:
        return trainer.max_steps * trainer.batch_size
    return trainer.epochs * (50_000 if cfg.task.name == "cifar10" else 60_000)


@pytest.fixture
def data_root(fake_fashion_root, fake_cifar10) -> Path:
    assert fake_fashion_root[0] == fake_cifar10[0]
    return fake_fashion_root[0]


def test_the_suite_has_its_workloads():
    assert {"fmnist_cnn", "fmnist_mlp", "fmnist_linear", "charlm_gpt", "cifar10_resnet18"} <= set(WORKLOADS)
    assert all(SIZES[w] for w in WORKLOADS)
    assert SIZES["cifar10_resnet18"] == ["gpu"]  # needs the download: GPU size only
    assert set(HELDOUT_WORKLOADS) <= set(WORKLOADS)


@pytest.mark.slow
@pytest.mark.parametrize("workload", WORKLOADS)
def test_each_workload_size_composes_and_trains_a_few_steps(workload, data_root, tmp_path):
    for size in SIZES[workload]:
        overrides = [f"workload={workload}", f"size={size}", *TINY]
        task = composed(overrides).task.name
        if task == "charlm":  # a few thousand characters of its text
            overrides += ["task.max_chars=8000"]
        elif task in ("fashion_mnist", "mnist", "cifar10"):  # the image files written here
            overrides += [f"task.data_root={data_root}", "task.download=false"]
        check_command_line(overrides)
        cfg = composed(overrides)
        assert (cfg.workload, cfg.size) == (workload, size)
        summary = train(spec_from_config(cfg), tmp_path / size)
        assert summary["status"] == "completed", summary.get("message")
        assert summary["steps"] == 2
        assert summary["final"][cfg.objective] is not None


@pytest.mark.parametrize("workload", [w for w in WORKLOADS if len(SIZES[w]) > 1])
def test_size_gpu_is_one_override_that_changes_only_the_size(workload):
    cpu, gpu = composed([f"workload={workload}"]), composed([f"workload={workload}", "size=gpu"])
    assert cpu.size == "cpu" and gpu.size == "gpu"
    assert budget(gpu) > 5 * budget(cpu)
    for key in ("optimizer", "lr", "objective", "lr_range"):  # the same problem, bigger
        assert cpu[key] == gpu[key], key
    assert (cpu.task.name, cpu.model.name) == (gpu.task.name, gpu.model.name)


def test_a_workload_sets_what_the_user_does_not():
    cfg = composed(["workload=fmnist_linear", "lr=gen_exact", "optimizer.lr=0.5"])
    assert (cfg.task.name, cfg.model.name, cfg.optimizer.name) == ("fashion_mnist", "linear", "sgd")
    assert cfg.optimizer.momentum == 0.0 and cfg.optimizer.lr == 0.5 and cfg.lr.name == "gen_exact"


