"""The report's PNG figures: curves over seeds (mean with a min–max band), learning-rate
traces and the learning-rate sensitivity curve. Matplotlib's object API only (``Figure``
saved through the Agg canvas): no pyplot state, no GUI backend."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.transforms import blended_transform_factory

from genlr.methods.gen_base import ARMIJO_C

from .groups import Group, group_name, varying_keys

CURVES = {  # file stem -> (title, [(tag, panel title)])
    "loss": ("loss", [("train/loss", "train loss"), ("eval/loss", "eval loss")]),
    "accuracy": ("accuracy", [("eval/acc", "eval accuracy")]),
}


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def mean_curve(group: Group, tag: str, x: str) -> tuple[list[float], list[float], list[float], list[float]]:
    """``(xs, mean, low, high)`` of ``tag`` over the group's runs, step by step.

    Points are matched by step; at each step the mean, min and max are over the runs that
    logged it. ``x="time"`` puts each step at the mean over runs of the seconds since the
    run started at which it was logged.
    """
    by_step: dict[int, list[tuple[float, float]]] = {}
    for run in group.runs:
        for step, seconds, value in run.series(tag):
            by_step.setdefault(step, []).append((seconds, value))
    xs, mean, low, high = [], [], [], []
    for step in sorted(by_step):
        points = by_step[step]
        values = [v for _, v in points]
        xs.append(statistics.fmean(s for s, _ in points) if x == "time" else step)
        mean.append(statistics.fmean(values))
        low.append(min(values))
        high.append(max(values))
    return xs, mean, low, high


def _legend(figure: Figure, ax, n: int) -> None:
    if ax.get_legend_handles_labels()[0]:
        if n > 6:
            ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        else:
            ax.legend(fontsize=7)


def _save(figure: Figure, path: Path, rect: tuple[float, float, float, float] | None = None) -> Path:
    figure.tight_layout(rect=rect)
    figure.savefig(path, format="png")
    return path


def curve_figure(groups: Sequence[Group], panels: Sequence[tuple[str, str]], x: str,
                 title: str, path: Path) -> Path | None:
    """One panel per tag, one line per group with its min–max band; None if no group
    logged any of the tags."""
    panels = [(tag, t) for tag, t in panels if any(run.series(tag) for g in groups for run in g.runs)]
    if not panels:
        return None
    wide = len(groups) > 6
    figure = Figure(figsize=(5.2 * len(panels) + (2.5 if wide else 0), 4.0), dpi=100)
    colors = _colors(len(groups))
    for i, (tag, panel_title) in enumerate(panels):
        ax = figure.add_subplot(1, len(panels), i + 1)
        positive = True
        for group, color in zip(groups, colors):
            xs, mean, low, high = mean_curve(group, tag, x)
            if not xs:
                continue
            positive &= min(low) > 0
            n = sum(1 for run in group.runs if run.series(tag))
            ax.plot(xs, mean, color=color, label=f"{group.name} (n={n})",
                    marker="o" if len(xs) == 1 else None, markersize=3)
            if n > 1:
                ax.fill_between(xs, low, high, color=color, alpha=0.2, linewidth=0)
        if positive and "loss" in tag:
            ax.set_yscale("log")
        ax.set_title(panel_title)
        ax.set_xlabel("step" if x == "step" else "wall time since start (s)")
        ax.grid(alpha=0.3)
        if i == len(panels) - 1:
            _legend(figure, ax, len(groups))
    figure.suptitle(f"{title} (mean over seeds, band: min–max)", fontsize=10)
    return _save(figure, path)


def lr_figure(groups: Sequence[Group], path: Path, title: str = "") -> Path | None:
    """``train/lr`` per group against step (mean, band over seeds), log scale; ``title``
    prefixes the figure's title."""
    if not any(run.series("train/lr") for g in groups for run in g.runs):
        return None
    wide = len(groups) > 6
    figure = Figure(figsize=(6.5 + (2.5 if wide else 0), 4.0), dpi=100)
    ax = figure.add_subplot()
    for group, color in zip(groups, _colors(len(groups))):
        xs, mean, low, high = mean_curve(group, "train/lr", "step")
        if not xs:
            continue
        ax.plot(xs, mean, color=color, label=group.name, marker="o" if len(xs) == 1 else None,
                markersize=3)
        ax.fill_between(xs, low, high, color=color, alpha=0.2, linewidth=0)
    # Log even when a schedule reaches 0 at its end (that point is left out), so that one
    # method's spike does not flatten every other trace.
    ax.set_yscale("log", nonpositive="mask")
    ax.set_title(f"{title}learning rate (train/lr, param group 0)")
    ax.set_xlabel("step")
    ax.set_ylabel("lr")
    ax.grid(alpha=0.3)
    _legend(figure, ax, len(groups))
    return _save(figure, path)


def _probes(run, tag: str) -> list[tuple[int, float]]:
    """``(step, value)`` of ``tag``, one point per measurement: lazy steps log the last
    probe's measurements again, so a value equal to the one logged before is dropped."""
    points, last = [], None
    for step, _, value in run.series(tag):
        if value != last:
            points.append((step, value))
        last = value
    return points


def _rolling_median(points: list[tuple[int, float]], width: int = 25) -> tuple[list, list]:
    xs, ys = [], []
    for i in range(len(points)):
        window = sorted(v for _, v in points[max(0, i - width + 1):i + 1])
        xs.append(points[i][0])
        ys.append(window[len(window) // 2])
    return xs, ys


# The band [2(1-c) alpha*, 2 alpha*] in units of s* = alpha*/lr (genlr.methods.gen_base).
BAND_EDGES_S_STAR = (0.5, 1.0 / (2.0 * (1.0 - ARMIJO_C)))


def method_figure(groups: Sequence[Group], path: Path) -> Path | None:
    """What a GeN (or Newt) run measured over training, one line per group (its first
    run): the lr against the band's line search, ``s*`` with the band's edges, slope and
    curvature per unit lr, the share of probes without a usable measurement, the horizon
    scale. None if no run probed."""
    runs = [(g, g.runs[0]) for g in groups if g.runs and g.runs[0].series("method/s_star")]
    if not runs:
        return None
    figure = Figure(figsize=(15.5, 7.5), dpi=100)
    axes = [figure.add_subplot(2, 3, i + 1) for i in range(6)]
    for (group, run), color in zip(runs, _colors(len(runs))):
        steps = [(s, v) for s, _, v in run.series("train/lr")]
        axes[0].plot(*zip(*steps), color=color, label=group.name)
        if window := run.series("method/window_alpha"):
            axes[0].plot([s for s, _, _ in window], [v for _, _, v in window], color=color,
                         linestyle=":", linewidth=1)
        lr = dict(steps)
        for ax, tag, scale in ((axes[1], "method/s_star", None), (axes[2], "method/slope", 1),
                               (axes[3], "method/curvature", 2)):
            points = _probes(run, tag)
            if scale:  # per unit lr: the step d scales with the lr it was taken at
                points = [(s, v / lr[s] ** scale) for s, v in points if lr.get(s)]
            if points:
                ax.plot(*_rolling_median(points), color=color)
        if fallback := [(s, v) for s, _, v in run.series("method/fallback")]:
            xs = [s for s, _ in fallback]
            share = [sum(v for _, v in fallback[max(0, i - 24):i + 1]) / min(i + 1, 25)
                     for i in range(len(fallback))]
            axes[4].plot(xs, share, color=color)
        if scale := run.series("method/scale"):
            axes[5].plot([s for s, _, _ in scale], [v for _, _, v in scale], color=color)
    for edge in BAND_EDGES_S_STAR:
        axes[1].axhline(edge, color="grey", linewidth=0.8, linestyle="--")
    axes[1].set_ylim(-0.5, 4.0)
    titles = ["lr (solid) and the band's window line search (dotted)",
              "s* of the probes (rolling median of 25); dashed: the band's edges, "
              "1/2 and 1/(2(1-c))",
              "slope / lr (rolling median)", "curvature / lr^2 (rolling median)",
              "share of probes without a usable measurement", "horizon scale"]
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in (axes[0], axes[3]):
        ax.set_yscale("log", nonpositive="mask")
    axes[2].set_yscale("symlog", linthresh=1e-3)
    # below the panels: group names can be long, and six panels leave no room beside them
    figure.legend(*axes[0].get_legend_handles_labels(), loc="lower center", fontsize=7,
                  frameon=False)
    figure.suptitle("the lr method's measurements over training (first seed of each group)",
                    fontsize=10)
    return _save(figure, path, rect=(0, 0.025 * (len(runs) + 1), 1, 1))


SENSITIVITY_KEY = "optimizer.lr"


def sensitivity_figure(groups: Sequence[Group], path: Path) -> Path | None:
    """Final eval metric against the initial learning rate (``optimizer.lr``, log x axis),
    one line per everything-else (usually the lr method), error bars = std over seeds.
    A setting whose runs all diverged or failed is marked with a red x on the x axis.
    None unless ``optimizer.lr`` takes at least two values."""
    lrs = {g.config.get(SENSITIVITY_KEY) for g in groups} - {None}
    if len(lrs) < 2:
        return None
    lines: dict[tuple, list[Group]] = {}
    for group in groups:
        if group.config.get(SENSITIVITY_KEY) is None:
            continue
        rest = tuple(sorted((k, v) for k, v in group.config.items() if k != SENSITIVITY_KEY))
        lines.setdefault(rest, []).append(group)
    configs = [dict(rest) for rest in lines]
    keys = varying_keys(configs)
    metrics = [m for m in ("final_eval_acc", "final_eval_loss")
               if any(g.stats.get(m) and g.stats[m].mean is not None for g in groups)]
    if not metrics:
        return None
    figure = Figure(figsize=(5.5 * len(metrics) + 2.5, 4.0), dpi=100)
    colors = _colors(len(lines))
    for i, metric in enumerate(metrics):
        ax = figure.add_subplot(1, len(metrics), i + 1)
        marker_transform = blended_transform_factory(ax.transData, ax.transAxes)
        for (rest, members), color in zip(lines.items(), colors):
            members = sorted(members, key=lambda g: float(g.config[SENSITIVITY_KEY]))
            label = group_name(dict(rest), keys)
            xs, ys, errs, failed = [], [], [], []
            for g in members:
                stat = g.stats[metric]
                if stat.mean is None:
                    failed.append(float(g.config[SENSITIVITY_KEY]))
                else:
                    xs.append(float(g.config[SENSITIVITY_KEY]))
                    ys.append(stat.mean)
                    errs.append(stat.std or 0.0)
            if xs:
                ax.errorbar(xs, ys, yerr=errs, color=color, marker="o", markersize=4,
                            capsize=3, label=label)
            if failed:
                ax.plot(failed, [0.02] * len(failed), "x", color="red", markersize=8,
                        transform=marker_transform,
                        label=f"{label}: no completed run" if not xs else None)
        ax.set_xscale("log")
        if metric == "final_eval_loss" and all(
                g.stats[metric].mean is None or g.stats[metric].mean > 0 for g in groups):
            ax.set_yscale("log")
        ax.set_xlabel(f"initial learning rate ({SENSITIVITY_KEY})")
        ax.set_ylabel(metric.replace("_", " "))
        ax.set_title(f"{metric.replace('_', ' ')} vs initial lr")
        ax.grid(alpha=0.3, which="both")
        if i == len(metrics) - 1:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    figure.suptitle("learning-rate sensitivity (mean ± std over seeds; red x: all runs "
                    "diverged/failed)", fontsize=10)
    return _save(figure, path)


def write_figures(groups: Sequence[Group], out: Path) -> list[Path]:
    """Every figure the groups support, into ``out``; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, (title, panels) in CURVES.items():
        for x in ("step", "time"):
            path = curve_figure(groups, panels, x, f"{title} vs {'step' if x == 'step' else 'wall time'}",
                                out / f"{stem}_vs_{x}.png")
            if path:
                written.append(path)
    for path in (lr_figure(groups, out / "lr_vs_step.png"),
                 method_figure(groups, out / "method_vs_step.png"),
                 sensitivity_figure(groups, out / "lr_sensitivity.png")):
        if path:
            written.append(path)
    return written


__all__ = ["curve_figure", "lr_figure", "mean_curve", "method_figure", "sensitivity_figure",
           "write_figures"]
