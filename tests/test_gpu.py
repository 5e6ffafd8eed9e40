"""GPU runs (``pytest -m gpu``; skipped without CUDA): every LR method under bf16 autocast
and under fp16 with a GradScaler, on the CNN, a few steps each."""

from __future__ import annotations

import math

import pytest
import torch

from genlr.engine import RunSpec, TrainerConfig, train
from genlr.methods import METHODS

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
@pytest.mark.parametrize("lr", sorted(METHODS))
def test_every_method_trains_under_amp_on_cuda(lr, amp, tmp_path, fake_mnist):
    optimizer = {"name": "sgd", "lr": 0.05} if lr in ("polyak",) else {"name": "adamw"}
    spec = RunSpec(task={"name": "mnist", "data_root": str(fake_mnist[0]), "download": False},
                   model={"name": "cnn", "batchnorm": True}, optimizer=optimizer, lr={"name": lr},
                   trainer=TrainerConfig(device="cuda", amp=amp, max_steps=6, batch_size=16,
                                         progress=False, plots=False))
    summary = train(spec, tmp_path)
    assert summary["status"] == "completed", summary["message"]
    assert summary["device"].startswith("cuda") and summary["amp"] == amp
    assert math.isfinite(summary["final"]["train_loss"])
    assert summary["lr"]["final"] is not None and summary["lr"]["final"] > 0


def test_peak_memory_is_per_run_on_cuda(tmp_path, fake_mnist):
    spec = RunSpec(task={"name": "mnist", "data_root": str(fake_mnist[0]), "download": False},
                   trainer=TrainerConfig(device="cuda", max_steps=2, batch_size=16,
                                         progress=False, plots=False))
    assert train(spec, tmp_path / "a")["peak_memory_mb"] > 0
