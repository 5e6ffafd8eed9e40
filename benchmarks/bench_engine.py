"""Engine overhead against a bare hand-written PyTorch loop, in the same process.

Same task data (Fashion-MNIST held as tensors), same CNN, AdamW at a constant lr, batch
128. Each side is timed at two run lengths and the per-step cost is the difference over
the difference in steps, so set-up, the final evaluation and the checkpoint cancel out.
Logging, the loss sync, the progress bar and the stats are what remain: the overhead.

    .venv/bin/python benchmarks/bench_engine.py [--short 20 --long 120 --repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from genlr.engine import RunSpec, TrainerConfig, train
from genlr.models import build_model
from genlr.tasks import build_task


def bare_loop(task, steps: int, batch_size: int, seed: int = 0) -> float:
    """What a user writes by hand: the seconds it takes to train ``steps`` steps."""
    torch.manual_seed(seed)
    model = build_model("cnn", task)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = task._data("train")
    order = torch.randperm(len(y))
    start = time.perf_counter()
    for i in range(steps):
        index = order[i * batch_size:(i + 1) * batch_size]
        inputs, targets = task.prepare(x[index]), y[index]
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(inputs), targets)
        loss.backward()
        optimizer.step()
    loss.item()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", type=int, default=20)
    parser.add_argument("--long", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()

    task = build_task("fashion_mnist")
    task.setup("cpu")
    steps = args.long - args.short
    bare, engine = [], []
    for _ in range(args.repeats):  # interleaved, so drifts in machine load hit both alike
        bare.append((bare_loop(task, args.long, args.batch_size)
                     - bare_loop(task, args.short, args.batch_size)) / steps)
        engine.append((_wall(args.long, args.batch_size) - _wall(args.short, args.batch_size)) / steps)
    b, e = statistics.median(bare), statistics.median(engine)
    print(f"machine: {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"bare loop   {b * 1e3:8.2f} ms/step")
    print(f"gen engine  {e * 1e3:8.2f} ms/step")
    print(f"overhead    {(e / b - 1) * 100:+8.1f} %")


def _wall(steps: int, batch_size: int) -> float:
    spec = RunSpec(trainer=TrainerConfig(max_steps=steps, batch_size=batch_size, plots=False,
                                         progress=False, device="cpu"))
    with tempfile.TemporaryDirectory() as run_dir:
        start = time.perf_counter()
        train(spec, run_dir)
        return time.perf_counter() - start


if __name__ == "__main__":
    main()
