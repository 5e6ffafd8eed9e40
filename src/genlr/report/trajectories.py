"""Trajectories of learning-rate methods on the 2-D test problems (Rosenbrock, Beale),
drawn over a log-scaled contour plot of the objective, as in the GeN paper's figures
(Bu & Xu, ICLR 2025).

The engine logs losses, not coordinates, so the paths are recomputed in-process: each
(optimizer, lr method) is built exactly as ``gen-train`` builds it (``genlr.engine.build_run``:
the task, ``model=coords``, the optimizer, the lr method and the peers' hooks) and trained by
the engine's own steps (``genlr.engine.training_steps``) while the point is recorded. A 2-D problem takes
milliseconds per step, so a figure of a dozen methods takes seconds::

    from genlr.report.trajectories import synthetic_figures
    synthetic_figures("figures/")                    # rosenbrock.png, beale.png

or ``gen-report --synthetic figures/``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from genlr.options import unflatten_config

TRAJECTORY_TASKS = ("rosenbrock", "beale")

# The window each problem is drawn in (x range, y range): the start, the valley and the
# minimiser of the default problem; paths leaving it are clipped, not rescaled.
WINDOWS = {
    "rosenbrock": ((-2.0, 2.0), (-1.0, 3.0)),
    "beale": ((-1.0, 4.5), (-1.5, 2.0)),
}

# (label, optimizer config, lr config): plain gradient descent and Adam, each with a
# constant learning rate and with every second-order method, plus the lr-free peers.
# Base learning rates are the ones at which the constant-lr baseline does not diverge on
# either problem from its standard start; the second-order methods rescale that step.
DEFAULT_METHODS: tuple[tuple[str, dict[str, Any], dict[str, Any]], ...] = (
    ("GD", {"name": "sgd", "lr": 1e-3, "momentum": 0.0}, {"name": "constant"}),
    ("GD + GeN exact", {"name": "sgd", "lr": 1e-3, "momentum": 0.0}, {"name": "gen_exact"}),
    ("GD + GeN parabola", {"name": "sgd", "lr": 1e-3, "momentum": 0.0}, {"name": "gen_parabola"}),
    ("GD + Newt", {"name": "sgd", "lr": 1e-3, "momentum": 0.0}, {"name": "newt"}),
    ("GD + Polyak", {"name": "sgd", "lr": 1e-3, "momentum": 0.0}, {"name": "polyak"}),
    ("GD + hypergradient", {"name": "sgd", "lr": 1e-3, "momentum": 0.0}, {"name": "hypergradient"}),
    ("Adam", {"name": "adam", "lr": 1e-2}, {"name": "constant"}),
    ("Adam + GeN exact", {"name": "adam", "lr": 1e-2}, {"name": "gen_exact"}),
    ("Adam + GeN parabola", {"name": "adam", "lr": 1e-2}, {"name": "gen_parabola"}),
    ("Adam + Newt", {"name": "adam", "lr": 1e-2}, {"name": "newt"}),
    ("Prodigy", {"name": "prodigy"}, {"name": "constant"}),
    ("DoG", {"name": "dog"}, {"name": "constant"}),
    ("Schedule-Free SGD", {"name": "schedulefree_sgd"}, {"name": "constant"}),
)
DEFAULT_STEPS = 500
ESCAPE_RADIUS = 1e3  # a point this far out has diverged: stop tracing


@dataclass
class Path2D:
    """A traced path: the points visited (start included) and the objective gap."""

    label: str
    points: list[tuple[float, float]] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)  # f(theta_t) - f*
    status: str = "completed"  # completed | diverged | error
    message: str = ""


def trace(task: Mapping[str, Any], optimizer: Mapping[str, Any], lr: Mapping[str, Any],
          steps: int = DEFAULT_STEPS, label: str = "", seed: int = 0) -> Path2D:
    """Run ``steps`` steps of (optimizer, lr method) on a coordinate task and record the
    point after each; the engine's build and steps, on CPU, without writing anything. A
    point that leaves a ball of radius 1e3 or a non-finite loss ends the path as
    ``diverged``; a component that cannot be built gives status ``error``."""
    from genlr.engine import Diverged, RunSpec, TrainerConfig, build_run, training_steps
    from genlr.messages import one_line

    path = Path2D(label or f"{optimizer['name']} + {lr['name']}")
    task = {"steps_per_epoch": steps, **task}
    spec = RunSpec(task=dict(task), model={"name": "coords"}, optimizer=dict(optimizer),
                   lr=dict(lr), trainer=TrainerConfig(device="cpu", max_steps=steps,
                                                      progress=False, plots=False), seed=seed)
    torch.manual_seed(seed)
    try:
        run = build_run(spec, torch.device("cpu"))
    except (ValueError, TypeError, ImportError) as err:
        path.status, path.message = "error", one_line(err, with_type=True)
        return path
    objective, optimum = run.task.objective, run.task.optimum()
    f_star = float(objective(optimum))
    theta = next(run.model.parameters())

    def record() -> bool:
        with torch.no_grad():
            point = theta.detach().double()
            value = float(objective(theta.detach()))
        if not (math.isfinite(value) and torch.isfinite(point).all()
                and float(point.norm()) < ESCAPE_RADIUS):
            return False
        path.points.append((float(point[0]), float(point[1])))
        path.gaps.append(max(value - f_star, 0.0))
        return True

    run.model.train()
    run.hooks.train()
    record()
    try:
        for step, _ in enumerate(training_steps(run), start=1):
            if not record():
                path.status, path.message = "diverged", f"left the plane at step {step}"
                break
    except Diverged as err:
        path.status, path.message = "diverged", f"{err} at step {len(path.points)}"
    except Exception as err:  # a method failing mid-run: draw what it did until then
        path.status, path.message = "error", one_line(err, with_type=True)
    return path


def _objective_grid(task_name: str, task_options: Mapping[str, Any], n: int = 300):
    from genlr.tasks import build_task

    task = build_task(task_name, **{k: v for k, v in task_options.items() if k != "name"})
    (x0, x1), (y0, y1) = WINDOWS.get(task_name, ((-3.0, 3.0), (-3.0, 3.0)))
    xs = torch.linspace(x0, x1, n, dtype=torch.float64)
    ys = torch.linspace(y0, y1, n, dtype=torch.float64)
    grid_x, grid_y = torch.meshgrid(xs, ys, indexing="xy")
    with torch.no_grad():
        values = task.objective(torch.stack([grid_x, grid_y]))
        f_star = float(task.objective(task.optimum().double()))
    gap = (values - f_star).clamp_min(1e-12)
    return task, grid_x.numpy(), grid_y.numpy(), gap.numpy()


def trajectory_figure(task_name: str, paths: Sequence[Path2D], out: str | Path,
                      task_options: Mapping[str, Any] | None = None) -> Path:
    """Contour plot of ``f - f*`` (log levels) with each path over it, and ``f - f*``
    against step beside it; the start is a black dot, the minimiser a star, a diverged
    path ends in a red x."""
    from matplotlib import colormaps

    task, gx, gy, gap = _objective_grid(task_name, task_options or {})
    figure = Figure(figsize=(14.0, 5.6), dpi=100)
    ax, ax_gap = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    levels = [10.0 ** e for e in range(math.floor(math.log10(gap.min())),
                                        math.ceil(math.log10(gap.max())) + 1)]
    contour = ax.contourf(gx, gy, gap, levels=levels, norm=LogNorm(), cmap="Greys", alpha=0.6)
    ax.contour(gx, gy, gap, levels=levels, norm=LogNorm(), colors="grey", linewidths=0.4)
    figure.colorbar(contour, ax=ax, label="f − f* (log)")
    cmap = colormaps["tab20"]
    start = task.start().tolist()
    optimum = task.optimum().tolist()
    for i, path in enumerate(paths):
        color = cmap(i % cmap.N)
        note = "" if path.status == "completed" else f" ({path.status})"
        if path.points:
            xs, ys = zip(*path.points)
            ax.plot(xs, ys, color=color, linewidth=1.2, marker=".", markersize=2,
                    label=f"{path.label}{note}")
            if path.status != "completed":
                ax.plot(xs[-1], ys[-1], "x", color="red", markersize=8)
            positive = [(s, g) for s, g in enumerate(path.gaps) if g > 0]
            if positive:
                ax_gap.plot(*zip(*positive), color=color, linewidth=1.2, label=f"{path.label}{note}")
        else:
            ax.plot([], [], color=color, label=f"{path.label}{note}")
    ax.plot(*start, "o", color="black", markersize=6, label="start")
    ax.plot(*optimum, "*", color="gold", markeredgecolor="black", markersize=14, label="minimum")
    (x0, x1), (y0, y1) = WINDOWS.get(task_name, ((gx.min(), gx.max()), (gy.min(), gy.max())))
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_title(f"{task_name}: trajectories")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax_gap.set_yscale("log")
    ax_gap.set_title(f"{task_name}: f − f* against step")
    ax_gap.set_xlabel("step")
    ax_gap.grid(alpha=0.3, which="both")
    ax_gap.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    figure.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, format="png")
    return out


def synthetic_figures(out_dir: str | Path, tasks: Sequence[str] = TRAJECTORY_TASKS,
                      methods: Sequence[tuple[str, Mapping, Mapping]] = DEFAULT_METHODS,
                      steps: int = DEFAULT_STEPS) -> dict[str, tuple[Path, list[Path2D]]]:
    """``<out_dir>/<task>.png`` for each task with every method's path; returns
    ``{task: (figure path, paths)}``. Methods that cannot be built (a peer's package not
    installed) appear in the legend as ``error`` and in the returned paths' messages."""
    out_dir = Path(out_dir)
    result = {}
    for task_name in tasks:
        paths = [trace({"name": task_name}, optimizer, lr, steps, label)
                 for label, optimizer, lr in methods]
        result[task_name] = (trajectory_figure(task_name, paths, out_dir / f"{task_name}.png"), paths)
    return result


def trace_config(flat_config: Mapping[str, Any], label: str, max_steps: int = 5000) -> Path2D:
    """The path of one run's composed config (flattened, as the report reads it):
    the same task options, optimizer and lr method, as many steps as the run was given
    (at most ``max_steps``)."""
    from genlr.engine import TrainerConfig

    config = unflatten_config({k: list(v) if isinstance(v, tuple) else v
                               for k, v in flat_config.items()})
    trainer = config.get("trainer", {})
    known = {f.name for f in fields(TrainerConfig)}
    trainer = TrainerConfig(**{k: v for k, v in trainer.items() if k in known})
    task = dict(config.get("task", {}))
    per_epoch = int(task.get("steps_per_epoch", 100))
    steps = per_epoch * trainer.epochs
    if trainer.max_steps is not None:
        steps = min(steps, trainer.max_steps)
    steps = min(steps, max_steps)
    task["steps_per_epoch"] = per_epoch
    path = trace(task, config.get("optimizer", {}), config.get("lr", {}), steps, label,
                 seed=int(config.get("seed", 0) or 0))
    return path
