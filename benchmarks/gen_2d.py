"""The GeN paper's 2-D problems (Rosenbrock, Beale) under plain SGD, as gen-train runs them
(the cosine horizon scale, each step's probe on the next "batch"), from several initial
lrs and run lengths, against a constant lr from the same starts: the final loss of each
run, ``—`` where it diverged (issue 26: never diverge, the median at or below the
constant's). Seconds in all. ::

    python benchmarks/gen_2d.py [--lrs 1e-4,1e-3,1e-2] [--steps 500,2000]
"""

from __future__ import annotations

import argparse
import math
import statistics

import torch

from genlr import ExactGeN, ParabolaGeN
from genlr.tasks import build_task

ROWS = {"constant": None, "gen_exact": ExactGeN, "gen_parabola": ParabolaGeN}


def final_loss(problem: str, row: str, lr: float, steps: int) -> float:
    """The loss after ``steps`` steps of ``row`` from ``lr``; inf once it is not finite."""
    task = build_task(problem)
    task.setup("cpu")
    model = task.init_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    method = (ROWS[row](optimizer, model, task.loss, total_steps=steps, scale="cosine")
              if ROWS[row] else None)
    for step in range(steps):
        optimizer.zero_grad()
        loss = task.loss(model, step)
        if not math.isfinite(float(loss.detach())):
            return math.inf
        loss.backward()
        if method is None:
            optimizer.step()
        else:
            method.step(step, loss=loss, probe_batch=step + 1)
    with torch.no_grad():
        last = float(task.loss(model, steps))
    return last if math.isfinite(last) else math.inf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lrs", default="1e-4,1e-3,1e-2")
    parser.add_argument("--steps", default="500,2000")
    args = parser.parse_args()
    lrs = [float(v) for v in args.lrs.split(",")]
    lengths = [int(v) for v in args.steps.split(",")]
    print("| problem | steps | row | " + " | ".join(f"{lr:g}" for lr in lrs) + " | median |")
    print("|---" * (len(lrs) + 4) + "|")
    for problem in ("rosenbrock", "beale"):
        for steps in lengths:
            for row in ROWS:
                losses = [final_loss(problem, row, lr, steps) for lr in lrs]
                cells = ["—" if v == math.inf else f"{v:.2g}" for v in losses]
                median = statistics.median(losses)
                print(f"| {problem} | {steps} | {row} | " + " | ".join(cells)
                      + f" | {'—' if median == math.inf else f'{median:.2g}'} |", flush=True)


if __name__ == "__main__":
    main()
