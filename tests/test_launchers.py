"""Sweeps beyond the basic launcher: submitit (local here, SLURM on clusters) and joblib."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from gen_cli.schema import register_schemas

GEN_TRAIN = str(Path(sys.executable).with_name("gen-train"))


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["submitit_local", "joblib"])
def test_sweep_through_launcher(launcher, tmp_path):
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [GEN_TRAIN, "-m", f"hydra/launcher={launcher}", "task=quadratic", "lr=constant,cosine",
         "trainer.max_steps=3", "trainer.plots=false", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summaries = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/summary.json"))]
    assert [s["lr_method"] for s in summaries] == ["constant", "cosine"]
    assert all(s["status"] == "completed" for s in summaries)


def test_slurm_launcher_config_composes():
    register_schemas()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="gen_cli.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=["hydra/launcher=slurm"],
                      return_hydra_config=True)
    GlobalHydra.instance().clear()
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.gpus_per_node == 1 and launcher.timeout_min == 240
