"""How far ExactGeN moves the learning rate, by per-probe clamp (``max_factor``), on the
models users bring: the data behind ExactGeN's default clamp.

For each model and optimizer, ``--steps`` training steps with ExactGeN at its defaults but
``max_factor`` in {none, 4, 2}, and with a constant lr: the largest lr reached relative to
the initial one, the final training loss (mean of the last 10 steps) and whether the run
diverged. Models: the registry's GPT on ``task=charlm`` and LSTM and GRU language models on
the same text; the registry's CNN and ViT on Fashion-MNIST (real images from Debian's
package where present, random ones otherwise).

    python benchmarks/exact_gen_clamp.py --steps 100
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from genlr import ExactGeN  # noqa: E402
from genlr.models import build_model  # noqa: E402
from genlr.tasks import build_task  # noqa: E402


class RecurrentLM(nn.Module):
    def __init__(self, vocab: int, cell: type[nn.RNNBase], width: int = 128) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.rnn = cell(width, width, num_layers=2, batch_first=True)
        self.head = nn.Linear(width, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(self.embed(ids))[0])


def workloads(steps: int):
    text = build_task("charlm", max_chars=500_000)
    text.setup("cpu")
    images = build_task("fashion_mnist", train_size=steps * 32 + 64)
    try:
        images.setup("cpu")
    except FileNotFoundError:
        images = None
    yield "gpt", text, lambda: build_model("gpt", text)
    yield "lstm", text, lambda: RecurrentLM(text.num_outputs, nn.LSTM)
    yield "gru", text, lambda: RecurrentLM(text.num_outputs, nn.GRU)
    if images is not None:
        yield "cnn", images, lambda: build_model("cnn", images)
        yield "vit", images, lambda: build_model("vit", images, depth=2, dim=64)


OPTIMIZERS = {
    "adamw 1e-3": lambda p: torch.optim.AdamW(p, lr=1e-3),
    "sgd 0.05 m0.9": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
}
CLAMPS = {"constant lr": "off", "max_factor none": None, "max_factor 4": 4.0, "max_factor 2": 2.0}


def run(task, make_model, make_optimizer, clamp, steps: int) -> tuple[float, float, bool]:
    torch.manual_seed(0)
    model = make_model()
    opt = make_optimizer(model.parameters())
    method = None if clamp == "off" else ExactGeN(opt, model, task.loss, max_factor=clamp)
    lr0, top, losses = opt.param_groups[0]["lr"], 0.0, []
    batches = task.train_batches(32, epoch=0, seed=0)
    upcoming = next(batches)
    for _ in range(steps):
        batch, upcoming = upcoming, next(batches)
        opt.zero_grad(set_to_none=True)
        loss = task.loss(model, batch)
        if not math.isfinite(float(loss)):
            return top / lr0, math.inf, True
        loss.backward()
        if method is None:
            opt.step()
        else:
            method.step(batch, loss=loss, probe_batch=upcoming)
        top = max(top, opt.param_groups[0]["lr"])
        losses.append(float(loss))
    return top / lr0, sum(losses[-10:]) / 10, False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    print(f"{'model':6s} {'optimizer':14s} {'configuration':17s} {'max lr/lr0':>10s} "
          f"{'final loss':>10s}")
    for name, task, make_model in workloads(args.steps):
        for opt_name, make_optimizer in OPTIMIZERS.items():
            for label, clamp in CLAMPS.items():
                growth, loss, diverged = run(task, make_model, make_optimizer, clamp, args.steps)
                print(f"{name:6s} {opt_name:14s} {label:17s} {growth:10.3g} "
                      f"{'diverged' if diverged else f'{loss:10.4f}':>10s}", flush=True)


if __name__ == "__main__":
    main()
