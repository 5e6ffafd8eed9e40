"""One leaderboard across the workloads of a suite (``gen-report DIR --leaderboard``).

The folder is laid out as ``gen-suite`` writes it: ``DIR/<workload>/<row>/<run>`` (a row is
one method, its seeds the runs) and ``DIR/<workload>/tune/<baseline>/`` the Optuna sweeps
that tuned a baseline's lr (read for the tuning budget, never ranked).

Per workload, each row gets its final metric (the workload's ``objective``: eval accuracy,
or eval loss where that is what counts) as mean ± std over its completed runs, the steps and
seconds to the workload's target (the median over its runs, a run that never reached it
counting as never), the cost of a step, and its failures (every run that did not complete).
Across workloads: the mean rank, and the performance profile of Dolan & Moré (2002) as
AlgoPerf uses it (Dahl et al., 2023): for a row s, the fraction of workloads on which its
time to target is within a factor tau of the fastest row's.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure

from genlr.messages import duration

from .figures import lr_figure
from .groups import Group, Stat, Target, summarise, time_to_target
from .runs import NoRunsError, RunRecord, load_runs
from .tables import markdown_table

LEADERBOARD_DIRNAME = "leaderboard"
TUNE_ROW = "tune"  # DIR/<workload>/tune/<baseline>/: the tuning sweeps
# DIR/<workload>/sensitivity/: the initial-lr sensitivity runs (genlr.report.sensitivity),
# from other lrs than the rows' own: never ranked here.
SENSITIVITY_ROW = "sensitivity"
TARGET_FRACTION = 0.99  # the target: 99% of the best mean accuracy (loss: the best / 0.99)
# The rows of each workload's lr figure: gen-suite's rows whose lr an lr method sets (ours
# and the authors' GeN) against the tuned baselines. The peers are left out: the lr they log
# is a multiplier on their own adapted step, not a step size.
LR_FIGURE_ROWS = ("cosine_tuned", "constant_tuned", "gen_exact", "gen_parabola", "newt",
                  "gen_optim")


@dataclass
class Entry:
    """One row on one workload."""

    workload: str
    row: str
    group: Group
    metric: str  # the summary's final key: eval_acc, eval_loss or train_loss
    steps_to_target: float = math.inf  # median over the runs (inf: not reached by half)
    time_to_target_s: float = math.inf
    rank: float | None = None  # 1 = best final metric on this workload

    @property
    def cost_ratio(self) -> float | None:
        """Step time over the workload's base optimizer at constant lr (``_reference``)."""
        return self.group.cost_ratio

    @property
    def final(self) -> Stat:
        return self.group.stats[f"final_{self.metric}"]

    @property
    def failures(self) -> int:
        return len(self.group.runs) - len(self.group.completed)


@dataclass
class Tuning:
    """One tuned baseline: an Optuna sweep's trials and its best lr."""

    workload: str
    baseline: str
    trials: int
    lr_range: tuple[float, float] | None
    best_lr: float | None
    best_value: float | None


@dataclass
class Leaderboard:
    root: Path
    out: Path
    entries: list[Entry]
    targets: dict[str, Target]
    tuning: list[Tuning]
    run_time_s: float = 0.0  # the wall time of every run under root, tuning trials included
    files: list[Path] = field(default_factory=list)

    @property
    def workloads(self) -> list[str]:
        return sorted({e.workload for e in self.entries})

    @property
    def rows(self) -> list[str]:
        """Rows by mean rank over the workloads they ran on (best first)."""
        return sorted({e.row for e in self.entries}, key=lambda r: (self.mean_rank(r), r))

    def mean_rank(self, row: str) -> float:
        ranks = [e.rank for e in self.entries if e.row == row and e.rank is not None]
        return statistics.fmean(ranks) if ranks else math.inf

    def entry(self, workload: str, row: str) -> Entry | None:
        return next((e for e in self.entries if e.workload == workload and e.row == row), None)


def workload_metric(runs: Sequence[RunRecord]) -> str:
    """The workload's metric: the ``objective`` its runs were configured with, else eval
    accuracy where they report it, else eval loss."""
    for run in runs:
        if run.config.get("objective"):
            return str(run.config["objective"])
    has_acc = any((run.summary or {}).get("final", {}).get("eval_acc") is not None for run in runs)
    return "eval_acc" if has_acc else "eval_loss"


def lower_is_better(metric: str) -> bool:
    return "loss" in metric


def _median_hit(runs: Sequence[RunRecord], target: Target) -> tuple[float, float]:
    """Median over the runs of (steps, seconds) to the target; a run that did not complete
    or never reached it counts as infinite, so the median is finite when half got there."""
    hits = [time_to_target(run, target) if run.status == "completed" else None for run in runs]
    steps = [float(h[0]) if h else math.inf for h in hits]
    seconds = [h[1] if h else math.inf for h in hits]
    return statistics.median(steps), statistics.median(seconds)


def _rank(entries: list[Entry]) -> None:
    """Rank the rows of one workload by mean final metric (ties share the mean of their
    places); rows without a completed run share the last places."""
    lower = lower_is_better(entries[0].metric)
    key = {id(e): (e.final.mean if e.final.mean is not None else math.nan) for e in entries}
    scored = sorted((e for e in entries if not math.isnan(key[id(e)])),
                    key=lambda e: key[id(e)] if lower else -key[id(e)])
    places: list[list[Entry]] = []
    for entry in scored:
        if places and key[id(places[-1][0])] == key[id(entry)]:
            places[-1].append(entry)
        else:
            places.append([entry])
    unscored = [e for e in entries if math.isnan(key[id(e)])]
    if unscored:
        places.append(unscored)
    position = 1
    for tied in places:
        for entry in tied:
            entry.rank = position + (len(tied) - 1) / 2
        position += len(tied)


def _target(entries: list[Entry]) -> Target | None:
    means = [e.final.mean for e in entries if e.final.mean is not None]
    if not means:
        return None
    metric = entries[0].metric
    tag = metric.replace("_", "/", 1)  # eval_acc -> eval/acc, train_loss -> train/loss
    if lower_is_better(metric):
        return Target(tag, min(means) / TARGET_FRACTION)
    return Target(tag, math.floor(TARGET_FRACTION * max(means) * 1000) / 1000)


def _reference(entries: list[Entry]) -> Callable[[Group], Group | None]:
    """What a row's step cost is relative to: the workload's base optimizer (the one most
    of its rows use) at a constant lr, a row with ``lr=constant`` and that optimizer (looked
    up once the step times are known)."""
    base = Counter(e.group.config.get("optimizer.name") for e in entries).most_common(1)[0][0]
    return lambda group: next((e.group for e in entries if e.group.step_ms
                               and e.group.config.get("lr.name") == "constant"
                               and e.group.config.get("optimizer.name") == base), None)


def _tuning(root: Path, workload: str) -> list[Tuning]:
    import yaml

    found = []
    for sweep in sorted((root / workload / TUNE_ROW).glob("*/")):
        runs = [p for p in sweep.iterdir() if (p / ".hydra" / "config.yaml").is_file()]
        results_file = sweep / "optimization_results.yaml"
        results = yaml.safe_load(results_file.read_text()) if results_file.is_file() else {}
        lr_range = None
        if runs:
            config = yaml.safe_load((runs[0] / ".hydra" / "config.yaml").read_text())
            if config.get("lr_range"):
                lr_range = tuple(config["lr_range"])
        found.append(Tuning(workload, sweep.name, len(runs), lr_range,
                            (results.get("best_params") or {}).get("optimizer.lr"),
                            results.get("best_value")))
    return found


def build_leaderboard(root: str | Path, out: str | Path | None = None) -> Leaderboard:
    """Read the suite folder ``root``; raises :class:`NoRunsError` (one line) when it holds
    no ``<workload>/<row>/<run>`` runs."""
    root = Path(root)
    runs = load_runs(root)
    by_cell: dict[tuple[str, str], list[RunRecord]] = {}
    for run in runs:
        parts = run.path.relative_to(root).parts
        if len(parts) < 3:
            raise NoRunsError(f"{root} is not a suite folder: {run.path} is not at "
                              f"<workload>/<row>/<run> (as gen-suite writes them)")
        if parts[1] not in (TUNE_ROW, SENSITIVITY_ROW):
            by_cell.setdefault((parts[0], parts[1]), []).append(run)
    if not by_cell:
        raise NoRunsError(f"no runs under {root} besides tuning sweeps and sensitivity runs")
    entries, targets, tuning = [], {}, []
    for workload in sorted({w for w, _ in by_cell}):
        cells = {row: rs for (w, row), rs in sorted(by_cell.items()) if w == workload}
        metric = workload_metric([r for rs in cells.values() for r in rs])
        group_entries = [Entry(workload, row, Group(row, rs[0].config, rs), metric)
                         for row, rs in cells.items()]
        summarise([e.group for e in group_entries], None, _reference(group_entries))
        target = _target(group_entries)
        if target is not None:
            targets[workload] = target
            for entry in group_entries:
                entry.steps_to_target, entry.time_to_target_s = _median_hit(entry.group.runs, target)
        _rank(group_entries)
        entries += group_entries
        tuning += _tuning(root, workload)
    out = Path(out) if out is not None else root / LEADERBOARD_DIRNAME
    run_time = sum((run.summary or {}).get("wall_time_s") or 0.0 for run in runs)
    return Leaderboard(root, out, entries, targets, tuning, run_time)


def performance_profile(entries: Sequence[Entry], rows: Sequence[str], workloads: Sequence[str],
                        measure: str = "time_to_target_s") -> dict[str, list[float]]:
    """Each row's performance ratios, one per workload: its ``measure`` over the best row's
    on that workload (inf where it never reached the target or did not run). The profile
    rho_s(tau) is the fraction of these ratios <= tau."""
    ratios: dict[str, list[float]] = {row: [] for row in rows}
    for workload in workloads:
        values = {e.row: getattr(e, measure) for e in entries if e.workload == workload}
        best = min((v for v in values.values() if math.isfinite(v)), default=math.inf)
        for row in rows:
            value = values.get(row, math.inf)
            ratios[row].append(value / best if math.isfinite(value) and best > 0 else
                               (1.0 if value == best == 0 else math.inf))
    return ratios


def profile_figure(board: Leaderboard, path: Path) -> Path:
    """rho_s(tau) against tau (log axis) for time and for steps to the target."""
    from .figures import _colors, _save

    rows, workloads = board.rows, board.workloads
    figure = Figure(figsize=(11.5, 4.2), dpi=100)
    for i, (measure, label) in enumerate((("time_to_target_s", "time to target"),
                                          ("steps_to_target", "steps to target"))):
        ax = figure.add_subplot(1, 2, i + 1)
        ratios = performance_profile(board.entries, rows, workloads, measure)
        finite = [r for rs in ratios.values() for r in rs if math.isfinite(r)]
        tau_max = max(2.0, 1.5 * max(finite, default=1.0))
        for row, color in zip(rows, _colors(len(rows))):
            taus = sorted(r for r in ratios[row] if math.isfinite(r))
            xs = [1.0] + taus + [tau_max]
            ys = [sum(r <= x for r in ratios[row]) / len(workloads) for x in xs]
            ax.step(xs, ys, where="post", color=color, label=row)
        ax.set_xscale("log")
        ax.set_xlim(1.0, tau_max)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(f"tau: {label} over the best row's")
        ax.set_ylabel("fraction of workloads within tau")
        ax.set_title(f"performance profile: {label}")
        ax.grid(alpha=0.3)
        if i == 1:
            ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    figure.suptitle(f"{len(workloads)} workload(s); target per workload in leaderboard.md",
                    fontsize=10)
    return _save(figure, path)


def _number(value: float | None, fmt: str) -> str:
    if value is None:
        return "—"
    return "never" if math.isinf(value) else format(value, fmt)


def _final_text(entry: Entry) -> str:
    stat = entry.final
    if stat.mean is None:
        return "—"
    text = stat.text(4, show_n=False)
    bpc = [run.series("eval/bpc")[-1][2] for run in entry.group.completed if run.series("eval/bpc")]
    if entry.metric == "eval_loss" and bpc:
        text += f" ({statistics.fmean(bpc):.3f} bpc)"
    return text


def write_csv(board: Leaderboard, path: Path) -> Path:
    columns = ["workload", "row", "metric", "n_runs", "n_completed", "n_failures", "mean", "std",
               "target", "steps_to_target", "time_to_target_s", "step_time_ms", "step_cost_ratio",
               "rank", "run_dirs"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for e in board.entries:
            target = board.targets.get(e.workload)
            writer.writerow({
                "workload": e.workload, "row": e.row, "metric": e.metric,
                "n_runs": len(e.group.runs), "n_completed": len(e.group.completed),
                "n_failures": e.failures, "mean": _cell(e.final.mean), "std": _cell(e.final.std),
                "target": str(target) if target else "",
                "steps_to_target": _cell(e.steps_to_target),
                "time_to_target_s": _cell(e.time_to_target_s),
                "step_time_ms": _cell(e.group.step_ms), "step_cost_ratio": _cell(e.cost_ratio),
                "rank": _cell(e.rank),
                "run_dirs": ";".join(str(r.path.relative_to(board.root)) for r in e.group.runs),
            })
    return path


def _cell(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def _markdown(board: Leaderboard, command: str) -> str:
    lines = [f"# Leaderboard: {board.root.name}", "", f"Produced by `{command}`.", "",
             f"{len(board.workloads)} workload(s), {len(board.rows)} row(s), "
             f"{sum(len(e.group.runs) for e in board.entries)} run(s); every run here, "
             f"tuning trials included, took {duration(board.run_time_s)} of wall time (run "
             "one after another on one machine: the suite's total). Each cell: mean ± std "
             "over the row's completed runs (seeds); `failed` counts the runs that diverged, "
             "failed or did not finish, never dropped. Steps and time to target are medians "
             "over the row's runs, a run that never reached the target counting as never. "
             "`× base`: step time over the workload's base optimizer at a constant lr.", "",
             "## Ranks across workloads", "",
             "Per workload, rows are ranked by their mean final metric (1 = best; ties share "
             "the mean of their places; a row without a completed run ranks last).", ""]
    header = ["row", "mean rank", *board.workloads]
    rows = []
    for row in board.rows:
        cells = []
        for workload in board.workloads:
            entry = board.entry(workload, row)
            cells.append("—" if entry is None or entry.rank is None else f"{entry.rank:g}")
        rows.append([row, _number(board.mean_rank(row), ".2f"), *cells])
    lines += [markdown_table(header, rows), "", "## Performance profile", "",
              "For each row, the fraction of workloads on which its time (steps) to the "
              "workload's target is within a factor tau of the best row's (Dolan & Moré, "
              "2002; AlgoPerf). Higher and further left is better; a row that never reaches "
              "the target on a workload never counts there.", "",
              "![performance profile](performance_profile.png)"]
    for workload in board.workloads:
        entries = sorted((e for e in board.entries if e.workload == workload),
                         key=lambda e: (e.rank if e.rank is not None else math.inf, e.row))
        target = board.targets.get(workload)
        metric = entries[0].metric.replace("_", " ")
        lines += ["", f"## {workload}", "",
                  f"Metric: final {metric}; target: `{target}`." if target else
                  f"Metric: final {metric}; no target (no row completed).", ""]
        header = ["rank", "row", "runs", "failed", f"final {metric}", "steps to target",
                  "time to target (s)", "ms / step", "× base"]
        rows = [[_number(e.rank, "g"), e.row, len(e.group.runs), e.failures, _final_text(e),
                 _number(e.steps_to_target, ".0f"), _number(e.time_to_target_s, ".1f"),
                 _number(e.group.step_ms, ".1f"), _number(e.cost_ratio, ".2f")] for e in entries]
        lines.append(markdown_table(header, rows))
        if board.out.joinpath(f"lr_{workload}.png") in board.files:
            lines += ["", f"![lr over training, {workload}](lr_{workload}.png)"]
    if board.tuning:
        lines += ["", "## Tuning budget", "",
                  "Each tuned baseline: Optuna's TPE over `optimizer.lr`, log-uniform over the "
                  "stated range, on seed 0 (`gen-train experiment=tune_lr`); the best lr was "
                  "re-run over the seeds above.", ""]
        rows = [[t.workload, t.baseline, t.trials,
                 f"{t.lr_range[0]:g} … {t.lr_range[1]:g}" if t.lr_range else "—",
                 _number(t.best_lr, ".3g"), _number(t.best_value, ".4g")] for t in board.tuning]
        lines.append(markdown_table(["workload", "baseline", "trials", "lr range", "best lr",
                                     "best objective"], rows))
    return "\n".join(lines) + "\n"


def write_leaderboard(root: str | Path, out: str | Path | None = None,
                      command: str = "gen-report --leaderboard") -> Leaderboard:
    """Build the leaderboard of the suite folder ``root`` and write ``leaderboard.md``,
    ``leaderboard.csv``, ``performance_profile.png`` and each workload's ``lr_<workload>.png``
    (``LR_FIGURE_ROWS``) into ``out`` (default ``<root>/leaderboard``)."""
    board = build_leaderboard(root, out)
    board.out.mkdir(parents=True, exist_ok=True)
    md = board.out / "leaderboard.md"
    board.files = [write_csv(board, board.out / "leaderboard.csv"),
                   profile_figure(board, board.out / "performance_profile.png")]
    for workload in board.workloads:
        groups = [e.group for row in LR_FIGURE_ROWS if (e := board.entry(workload, row))]
        figure = lr_figure(groups, board.out / f"lr_{workload}.png", title=f"{workload}: ")
        if figure is not None:
            board.files.append(figure)
    md.write_text(_markdown(board, command), encoding="utf-8")
    board.files.insert(0, md)
    return board
