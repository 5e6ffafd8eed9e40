"""PNG plots of a run, into ``<run_dir>/plots/``: loss, accuracy and the learning rate.

Plots read a ``History``: ``{tag: [(step, value), ...]}`` with the run's TensorBoard tags
(``train/loss``, ``eval/loss``, ``eval/acc``, ``train/lr``, ``lr/group{i}``). It comes
from ``RunStats.history()`` during a run or ``read_history(run_dir)`` afterwards;
``(step, wall_time, value)`` points as ``read_scalars`` returns them are accepted too.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure

History = Mapping[str, Sequence[Sequence[float]]]

PLOTS_DIRNAME = "plots"


def _split(points: Sequence[Sequence[float]]) -> tuple[list[float], list[float], float | None]:
    """Finite (steps, values) of a series, and the first step whose value is not finite
    (None if all are), so a divergence is marked rather than silently dropped."""
    steps, values, first_bad = [], [], None
    for point in points:
        step, value = point[0], point[-1]  # (step, value) or (step, wall_time, value)
        if value is not None and math.isfinite(value):
            steps.append(step)
            values.append(value)
        elif first_bad is None:
            first_bad = step
    return steps, values, first_bad


def _plot_series(ax: Axes, points: Sequence[Sequence[float]], label: str) -> bool:
    """Draw one series; returns whether anything was drawn."""
    steps, values, first_bad = _split(points)
    if steps:
        # A lone point has no line; give it a marker so it shows.
        ax.plot(steps, values, label=label, marker="o" if len(steps) == 1 else None)
    if first_bad is not None:
        ax.axvline(first_bad, color="red", linestyle=":", linewidth=1, label=f"{label} non-finite")
    return bool(steps) or first_bad is not None


def _save(figure: Figure, ax: Axes, drew: bool, path: Path) -> Path:
    if drew:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    figure.tight_layout()
    # Figure.savefig picks the Agg canvas for PNG by itself: no pyplot, no GUI backend.
    figure.savefig(path, format="png")
    return path


def _new_axes(title: str, ylabel: str) -> tuple[Figure, Axes]:
    figure = Figure(figsize=(6.0, 4.0), dpi=100)
    ax = figure.add_subplot()
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return figure, ax


def _group_index(tag: str) -> int:
    return int(re.fullmatch(r"lr/group(\d+)", tag).group(1))


def lr_series(history: History) -> dict[str, Sequence[Sequence[float]]]:
    """The learning-rate traces to draw: one per param group when there are several, else
    the single ``train/lr`` trace; and beside them the method's own lr where it differs
    from the applied one (``method/gen_lr``: GeN's before the horizon scale, so that a
    rule that held its lr does not look like a plain schedule)."""
    groups = sorted(
        (tag for tag in history if re.fullmatch(r"lr/group\d+", tag) and history[tag]),
        key=_group_index,
    )
    if len(groups) > 1:
        series = {f"group {_group_index(tag)}": history[tag] for tag in groups}
    else:
        tag = next((t for t in ("train/lr", *groups) if history.get(t)), None)
        series = {"lr": history[tag]} if tag else {}
    own = history.get("method/gen_lr")
    steps, values, _ = _split(history.get("train/lr", ()))
    applied = dict(zip(steps, values))
    if own and any(abs(v - applied.get(s, v)) > 1e-12 * abs(v) for s, v in zip(*_split(own)[:2])):
        series = {("applied lr" if k == "lr" else k): v for k, v in series.items()}
        series["the rule's own lr (before the horizon scale)"] = own
    return series


def write_plots(run_dir: str | os.PathLike, history: History) -> list[Path]:
    """Write ``loss.png`` (a log axis when every loss is positive), ``accuracy.png``
    (only if ``eval/acc`` was recorded) and ``lr.png`` into ``<run_dir>/plots/``; return
    the paths written.

    Empty, single-point and non-finite histories still give valid PNGs (a "no data"
    note, a marker, a dotted line where values stopped being finite).
    """
    plots_dir = Path(run_dir) / PLOTS_DIRNAME
    plots_dir.mkdir(parents=True, exist_ok=True)
    written = []

    figure, ax = _new_axes("loss", "loss")
    drew = False
    losses: list[float] = []
    for tag, label in (("train/loss", "train"), ("eval/loss", "eval")):
        drew |= _plot_series(ax, history.get(tag, ()), label)
        losses += _split(history.get(tag, ()))[1]
    # Losses fall over decades (and a diverging one climbs over many): a log axis shows
    # them all; a loss that can be negative (a quadratic's) keeps a linear one.
    if losses and min(losses) > 0:
        ax.set_yscale("log")
    written.append(_save(figure, ax, drew, plots_dir / "loss.png"))

    if history.get("eval/acc"):
        figure, ax = _new_axes("accuracy", "eval accuracy")
        drew = _plot_series(ax, history["eval/acc"], "eval")
        written.append(_save(figure, ax, drew, plots_dir / "accuracy.png"))

    figure, ax = _new_axes("learning rate", "lr")
    drew = False
    positive = False
    for label, points in lr_series(history).items():
        drew |= _plot_series(ax, points, label)
        positive |= any(v > 0 for v in _split(points)[1])
    # Log scale needs a positive value to anchor on; a trace of zeros stays linear.
    if positive:
        ax.set_yscale("log")
    written.append(_save(figure, ax, drew, plots_dir / "lr.png"))
    return written
