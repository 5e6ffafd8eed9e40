"""Sensitivity to the initial learning rate (``gen-report DIR --sensitivity``).

The folder is laid out as ``gen-suite DIR --sensitivity`` writes it:
``DIR/<workload>/sensitivity/<row>/x<mult>/<run>``, a row being one method (``constant``,
``cosine``, ``gen_parabola``, a peer, ...) and ``x<mult>`` its initial lr as a multiple of
the row's own default lr (``multiplier_dirname``). This module owns that layout and the
report: per workload ``sensitivity_<workload>.png`` (the final metric against the
multiplier, one line per row, the best point of the two baselines as the tuned baseline)
and one ``sensitivity.md`` (per workload a table of each row's metric at every multiplier,
its spreads, its gap to the tuned baseline at x1 and its failures).

The metric is the workload's ``objective`` (as the leaderboard reads it). A run that
diverged or failed is a result: it scores the worst value there is (accuracy 0, an
infinite loss), as a tuning trial does, and is counted; a run that has not finished
(interrupted, or still running) is left out and counted apart.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, NullFormatter, NullLocator
from matplotlib.transforms import blended_transform_factory

from .leaderboard import SENSITIVITY_ROW, lower_is_better, workload_metric
from .runs import NoRunsError, RunRecord, load_runs
from .tables import markdown_table

SENSITIVITY_DIRNAME = "sensitivity"  # the report's default folder, DIR/sensitivity/
BASELINES = ("constant", "cosine")  # the rows whose best point is the tuned baseline
ROW_ORDER = (*BASELINES, "gen_parabola", "gen_exact", "newt")  # then the rest by name
CENTRAL = (0.1, 10.0)  # the central range of the first spread: a decade either side
FAILED = ("diverged", "failed")
PENDING = ("interrupted", "incomplete")


def multiplier_dirname(multiplier: float) -> str:
    """``0.01`` -> ``x0.01``, ``1.0`` -> ``x1``, ``100`` -> ``x100``: the folder of a
    multiplier (and its label in the table and the figure)."""
    return f"x{multiplier:g}"


def parse_multiplier(name: str) -> float | None:
    """The multiplier of a folder name ``x<mult>``, or None if it is not one."""
    if not name.startswith("x"):
        return None
    try:
        value = float(name[1:])
    except ValueError:
        return None
    return value if value > 0 and math.isfinite(value) else None


@dataclass
class Cell:
    """One row at one multiplier: its runs (the seeds)."""

    multiplier: float
    runs: list[RunRecord]
    metric: str

    @property
    def failures(self) -> int:
        return sum(run.status in FAILED for run in self.runs)

    @property
    def pending(self) -> int:
        """Runs that have not finished: left out of the value."""
        return sum(run.status not in ("completed", *FAILED) for run in self.runs)

    @property
    def scores(self) -> list[float]:
        """Each finished run's final metric, a divergence or failure scoring the worst."""
        worst = math.inf if lower_is_better(self.metric) else 0.0
        scores = []
        for run in self.runs:
            if run.status in FAILED:
                scores.append(worst)
            elif run.status == "completed":
                value = ((run.summary or {}).get("final") or {}).get(self.metric)
                if value is not None:
                    scores.append(float(value) if math.isfinite(value) else worst)
        return scores

    @property
    def value(self) -> float | None:
        """The mean score over the seeds (inf for a loss as soon as one run diverged);
        None where no run has finished."""
        scores = self.scores
        return statistics.fmean(scores) if scores else None

    @property
    def worst(self) -> bool:
        """Whether the value is the worst there is: drawn at the figure's edge."""
        value = self.value
        return value is not None and (math.isinf(value) or self.failures == len(self.scores))

    @property
    def lr(self) -> float | None:
        value = self.runs[0].config.get("optimizer.lr") if self.runs else None
        return float(value) if isinstance(value, (int, float)) else None


@dataclass
class Curve:
    """One row on one workload: a cell per multiplier."""

    workload: str
    row: str
    metric: str
    cells: dict[float, Cell]  # by multiplier, ascending

    def value(self, multiplier: float) -> float | None:
        cell = self.cells.get(multiplier)
        return cell.value if cell else None

    def values(self, low: float = 0.0, high: float = math.inf) -> list[float]:
        return [c.value for m, c in self.cells.items() if low <= m <= high and c.value is not None]

    def spread(self, low: float = 0.0, high: float = math.inf) -> float | None:
        """max - min of the values at the multipliers in [low, high] (inf when one of them
        diverged on a loss); None with fewer than two."""
        values = self.values(low, high)
        if len(values) < 2:
            return None
        return math.inf if any(math.isinf(v) for v in values) else max(values) - min(values)

    def best(self, low: float = 0.0, high: float = math.inf) -> float | None:
        values = self.values(low, high)
        if not values:
            return None
        return min(values) if lower_is_better(self.metric) else max(values)

    @property
    def default_lr(self) -> float | None:
        """The lr at x1: any run's ``optimizer.lr`` over its multiplier."""
        for multiplier, cell in self.cells.items():
            if cell.lr is not None:
                return cell.lr / multiplier
        return None

    @property
    def failures(self) -> int:
        return sum(c.failures for c in self.cells.values())

    @property
    def pending(self) -> int:
        return sum(c.pending for c in self.cells.values())


@dataclass
class Tuned:
    """The best point of the baselines' grids: the figure's tuned baseline."""

    row: str
    multiplier: float
    value: float
    lr: float | None


@dataclass
class WorkloadSensitivity:
    name: str
    metric: str
    curves: list[Curve]

    @property
    def multipliers(self) -> list[float]:
        return sorted({m for c in self.curves for m in c.cells})

    @property
    def tuned(self) -> Tuned | None:
        points = [(cell.value, curve.row, m, cell.lr) for curve in self.curves
                  if curve.row in BASELINES for m, cell in curve.cells.items()
                  if cell.value is not None and math.isfinite(cell.value)]
        if not points:
            return None
        lower = lower_is_better(self.metric)
        value, row, multiplier, lr = min(points, key=lambda p: (p[0] if lower else -p[0], p[2]))
        return Tuned(row, multiplier, value, lr)

    def gap(self, curve: Curve) -> float | None:
        """The row's value at x1 minus the tuned baseline's (inf when x1 diverged on a
        loss, and so a loss's gap is better below 0, an accuracy's above)."""
        tuned, value = self.tuned, curve.value(1.0)
        if tuned is None or value is None:
            return None
        return math.inf if math.isinf(value) else value - tuned.value

    def curve(self, row: str) -> Curve | None:
        return next((c for c in self.curves if c.row == row), None)


@dataclass
class Sensitivity:
    root: Path
    out: Path
    workloads: list[WorkloadSensitivity]
    files: list[Path] = field(default_factory=list)

    @property
    def rows(self) -> list[str]:
        return _ordered({c.row for w in self.workloads for c in w.curves})


def _ordered(rows) -> list[str]:
    return sorted(rows, key=lambda r: (ROW_ORDER.index(r) if r in ROW_ORDER else len(ROW_ORDER), r))


def build_sensitivity(root: str | Path, out: str | Path | None = None) -> Sensitivity:
    """Read every ``<workload>/sensitivity/<row>/x<mult>/<run>`` under ``root``; raises
    :class:`NoRunsError` (one line) when there is none or a run sits elsewhere in them."""
    root = Path(root)
    if not root.is_dir():
        load_runs(root)  # its one-line error: missing, or a file
    workloads = []
    for folder in sorted(p for p in root.glob(f"*/{SENSITIVITY_ROW}") if p.is_dir()):
        try:
            runs = load_runs(folder)
        except NoRunsError:
            continue  # started, nothing written yet
        cells: dict[tuple[str, float], list[RunRecord]] = {}
        for run in runs:
            parts = run.path.relative_to(folder).parts
            multiplier = parse_multiplier(parts[1]) if len(parts) >= 3 else None
            if multiplier is None:
                raise NoRunsError(f"{run.path} is not at <workload>/{SENSITIVITY_ROW}/<row>/"
                                  f"x<mult>/<run> (as gen-suite --sensitivity writes them)")
            cells.setdefault((parts[0], multiplier), []).append(run)
        metric = workload_metric(runs)
        curves = []
        for row in _ordered({row for row, _ in cells}):
            by_mult = {m: Cell(m, rs, metric) for (r, m), rs in sorted(cells.items()) if r == row}
            curves.append(Curve(folder.parent.name, row, metric, by_mult))
        workloads.append(WorkloadSensitivity(folder.parent.name, metric, curves))
    if not workloads:
        raise NoRunsError(f"no sensitivity runs under {root} (looked for <workload>/"
                          f"{SENSITIVITY_ROW}/<row>/x<mult>/<run>, as gen-suite --sensitivity "
                          "writes them)")
    out = Path(out) if out is not None else root / SENSITIVITY_DIRNAME
    return Sensitivity(root, out, workloads)


def _label(metric: str) -> str:
    return metric.replace("_", " ")


def figure(workload: WorkloadSensitivity) -> Figure:
    """The final metric against the multiplier (log x; log y for a positive loss), one line
    with markers per row, the tuned baseline dashed, the worst cells as a red X at the edge
    the worst lies at (the top for a loss, the bottom for an accuracy)."""
    from .figures import _colors

    lower = lower_is_better(workload.metric)
    figure = Figure(figsize=(9.0, 4.6), dpi=100)
    ax = figure.add_subplot(1, 1, 1)
    edge = blended_transform_factory(ax.transData, ax.transAxes)
    edge_y = 0.97 if lower else 0.03
    stacked: dict[float, int] = {}  # worst cells so far at each multiplier: stacked, not hidden
    for curve, color in zip(workload.curves, _colors(len(workload.curves))):
        xs = list(curve.cells)
        # A worst cell breaks the line (NaN) and goes to the edge: its value is off the scale.
        ys = [math.nan if c.value is None or c.worst else c.value for c in curve.cells.values()]
        marker = "s" if curve.row in BASELINES else "o"
        ax.plot(xs, ys, marker=marker, markersize=5, color=color, label=curve.row)
        worst = [m for m, c in curve.cells.items() if c.worst]
        ys = []
        for m in worst:
            ys.append(edge_y + (-0.045 if lower else 0.045) * stacked.get(m, 0))
            stacked[m] = stacked.get(m, 0) + 1
        if worst:
            ax.plot(worst, ys, linestyle="none", marker="X", markersize=9, color=color,
                    markeredgecolor="red", transform=edge, clip_on=False)
    tuned = workload.tuned
    if tuned is not None:
        ax.axhline(tuned.value, linestyle="--", color="0.3", linewidth=1.2,
                   label=f"tuned baseline: {tuned.row} {multiplier_dirname(tuned.multiplier)} "
                         f"({tuned.value:.4g})")
    values = [v for c in workload.curves for v in c.values() if math.isfinite(v)]
    if lower and values and min(values) > 0:
        ax.set_yscale("log")
        # Losses span less than a decade or two: label the ticks as plain numbers, the
        # minor ones too where there is room (within one decade).
        plain = FuncFormatter(lambda v, _: f"{v:.3g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain if max(values) < 10 * min(values) else NullFormatter())
    ax.set_xscale("log")
    ax.set_xticks(workload.multipliers, [multiplier_dirname(m) for m in workload.multipliers],
                  fontsize=7)
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("initial lr, as a multiple of the row's default lr")
    ax.set_ylabel(f"final {_label(workload.metric)} ({'lower' if lower else 'higher'} is better)")
    ax.set_title(f"{workload.name}: final {_label(workload.metric)} against the initial lr")
    ax.grid(alpha=0.3, which="both")
    handles, labels = ax.get_legend_handles_labels()
    if stacked:
        handles.append(Line2D([], [], linestyle="none", marker="X", markersize=9, color="0.5",
                              markeredgecolor="red"))
        labels.append(f"diverged or failed (at the {'top' if lower else 'bottom'} edge)")
    ax.legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              borderaxespad=0)
    return figure


def _metric_text(value: float | None, metric: str) -> str:
    if value is None:
        return "—"
    if math.isinf(value):
        return "div."
    return f"{value:.4g}" if lower_is_better(metric) else f"{value:.3f}"


def _cell_text(cell: Cell | None) -> str:
    if cell is None:
        return ""
    finished = len(cell.scores)
    if cell.value is None:
        return "not finished" if cell.pending else "—"
    if cell.worst:
        text = "div." + (f" ({cell.failures}/{finished} seeds)" if finished > 1 else "")
    else:
        text = _metric_text(cell.value, cell.metric)
        text += f" ({cell.failures}/{finished} div.)" if cell.failures else ""
    return text + (f" (+{cell.pending} not finished)" if cell.pending else "")


def _spread_text(curve: Curve, low: float = 0.0, high: float = math.inf) -> str:
    spread = curve.spread(low, high)
    if spread is None:
        return "—"
    if math.isinf(spread):
        return "∞"
    if lower_is_better(curve.metric):
        best = curve.best(low, high)
        return f"{spread:.3g}" + (f" ({100 * spread / best:.1f}%)" if best else "")
    return f"{100 * spread:.1f} pt"


def _gap_text(workload: WorkloadSensitivity, curve: Curve) -> str:
    gap, tuned = workload.gap(curve), workload.tuned
    if gap is None or tuned is None:
        return "—"
    if math.isinf(gap):
        return "div."
    if lower_is_better(curve.metric):
        return f"{gap:+.3g}" + (f" ({100 * gap / tuned.value:+.1f}%)" if tuned.value else "")
    return f"{100 * gap:+.1f} pt"


def _markdown(report: Sensitivity, command: str) -> str:
    low, high = CENTRAL
    lines = [f"# Sensitivity to the initial lr: {report.root}", "",
             f"Produced by `{command}`.", "",
             "A learning-rate-free row would be a flat line at the tuned baseline's height: "
             "the same final metric from every initial lr, as good as the best lr of the "
             "baselines' grids.", "",
             "Each row ran from initial lrs that are multiples of its own default lr (`lr at "
             "x1`: its config's `optimizer.lr`, the workload's, or a peer's package's where "
             "the workload sets none): the columns, an empty cell a point not run. The tuned "
             "baseline is the best point of the two baselines' grids. A cell is the final "
             "metric, the mean over its seeds; a run that diverged or failed scores the worst "
             "value (accuracy 0, an infinite loss: `div.`), never dropped, and is counted in "
             "`diverged`. Spreads are max − min over the row's points in "
             f"{multiplier_dirname(low)}…{multiplier_dirname(high)} and over all of them (a "
             "loss's also in % of the row's best there; an accuracy's in points); `gap at x1` "
             "is the row's value at x1 minus the tuned baseline's."]
    for workload in report.workloads:
        lower = lower_is_better(workload.metric)
        lines += ["", f"## {workload.name}", ""]
        tuned = workload.tuned
        metric = f"final {_label(workload.metric)} ({'lower' if lower else 'higher'} is better)"
        if tuned is None:
            lines.append(f"Metric: {metric}; no tuned baseline (no baseline point finished).")
        else:
            lr = f", lr {tuned.lr:.3g}" if tuned.lr is not None else ""
            lines.append(f"Metric: {metric}. Tuned baseline: `{tuned.row}` at "
                         f"{multiplier_dirname(tuned.multiplier)}{lr}: "
                         f"{_metric_text(tuned.value, workload.metric)}.")
        multipliers = workload.multipliers
        header = ["row", "lr at x1", *map(multiplier_dirname, multipliers),
                  f"spread {multiplier_dirname(low)}–{multiplier_dirname(high)}", "spread (all)",
                  "gap at x1", "diverged"]
        rows = [[curve.row, "—" if curve.default_lr is None else f"{curve.default_lr:.3g}",
                 *(_cell_text(curve.cells.get(m)) for m in multipliers),
                 _spread_text(curve, low, high), _spread_text(curve), _gap_text(workload, curve),
                 curve.failures] for curve in workload.curves]
        lines += ["", markdown_table(header, rows)]
        pending = sum(c.pending for c in workload.curves)
        if pending:
            lines += ["", f"{pending} run(s) not finished are left out (rerun gen-suite "
                          "--sensitivity to finish them)."]
        name = f"sensitivity_{workload.name}.png"
        if report.out / name in report.files:
            lines += ["", f"![final {_label(workload.metric)} against the initial lr, "
                          f"{workload.name}]({name})"]
    return "\n".join(lines) + "\n"


def write_sensitivity(root: str | Path, out: str | Path | None = None,
                      command: str = "gen-report --sensitivity") -> Sensitivity:
    """Read the suite folder ``root`` (:func:`build_sensitivity`) and write
    ``sensitivity.md`` and each workload's ``sensitivity_<workload>.png`` into ``out``
    (default ``<root>/sensitivity``); ``files`` lists them, the markdown first."""
    from .figures import _save

    report = build_sensitivity(root, out)
    report.out.mkdir(parents=True, exist_ok=True)
    for workload in report.workloads:
        path = report.out / f"sensitivity_{workload.name}.png"
        report.files.append(_save(figure(workload), path))
    md = report.out / "sensitivity.md"
    md.write_text(_markdown(report, command), encoding="utf-8")
    report.files.insert(0, md)
    return report
