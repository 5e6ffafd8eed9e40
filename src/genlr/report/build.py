"""``write_report``: a run or a sweep folder -> ``report.md``, ``report.csv`` and PNG plots."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .figures import write_figures
from .groups import (Group, Target, best_per_method, default_target, format_value,
                     make_groups, metric_column, summarise, varying_keys)
from .runs import RunRecord, expected_jobs, load_runs
from .tables import cost_table, markdown_table, results_table, write_csv

REPORT_DIRNAME = "report"


@dataclass
class Report:
    """What ``write_report`` found and wrote."""

    root: Path
    out: Path
    runs: list[RunRecord]
    groups: list[Group]
    target: Target | None
    expected_jobs: int | None
    best: list[tuple[Group, list[Group]]] = field(default_factory=list)
    best_by: str = "final_eval_acc"  # the column ``best`` ranks by
    files: list[Path] = field(default_factory=list)

    @property
    def incomplete(self) -> int:
        """Jobs started but not finished, plus jobs of the sweep not started yet."""
        started_unfinished = sum(1 for run in self.runs if run.summary is None)
        not_started = max((self.expected_jobs or 0) - len(self.runs), 0)
        return started_unfinished + not_started

    def incomplete_line(self) -> str | None:
        started = sum(1 for run in self.runs if run.summary is None)
        parts = []
        if started:
            parts.append(f"{started} job(s) running or stopped before writing summary.json")
        if self.expected_jobs and self.expected_jobs > len(self.runs):
            parts.append(f"{self.expected_jobs - len(self.runs)} of {self.expected_jobs} "
                         f"sweep job(s) not started")
        return ("incomplete: " + "; ".join(parts)) if parts else None


def write_report(root: str | os.PathLike, out: str | os.PathLike | None = None,
                 target: Target | str | None = None, best_by: str = "eval/acc",
                 command: str | None = None, trajectories: bool = True) -> Report:
    """Read every run under ``root`` and write ``report.md``, ``report.csv`` and the
    figures into ``out`` (default ``<root>/report``).

    ``target`` (``Target`` or ``"eval/acc=0.85"``) sets the level for "steps / time to
    target"; by default 95% of the best group's mean final eval accuracy. ``best_by``
    ranks each method's settings (the tuning step of the method comparison).
    Raises ``NoRunsError`` when there is nothing to report.
    """
    root = Path(root)
    runs = load_runs(root)
    out = Path(out) if out is not None else root / REPORT_DIRNAME
    out.mkdir(parents=True, exist_ok=True)
    groups = make_groups(runs)
    if isinstance(target, str):
        target = Target.parse(target)
    summarise(groups, None)
    chosen = target or default_target(groups)
    summarise(groups, chosen)
    column = metric_column(best_by)
    report = Report(root, out, runs, groups, chosen, expected_jobs(root))
    report.best = best_per_method(groups, column)
    report.best_by = column
    keys = [k for k in varying_keys(run.config for run in runs)
            if k not in ("task.name", "model.name", "optimizer.name", "lr.name")]
    report.files.append(write_csv(out / "report.csv", groups, keys, chosen, root))
    report.files += write_figures(groups, out)
    if trajectories:
        report.files += _trajectory_figures(groups, out)
    command = command or "gen-report " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    md = out / "report.md"
    md.write_text(_markdown(report, column, command, target is None), encoding="utf-8")
    report.files.insert(0, md)
    return report


def _trajectory_figures(groups: Sequence[Group], out: Path) -> list[Path]:
    """For groups on a 2-D problem, each group's path recomputed in-process and drawn over
    the objective's contours: ``trajectories_<task>.png``."""
    from .trajectories import trace_config, trajectory_figure

    by_task: dict[str, list[Group]] = {}
    for group in groups:
        task = group.config.get("task.name")
        if task in ("rosenbrock", "beale") and group.config.get("model.name") == "coords":
            by_task.setdefault(task, []).append(group)
    written = []
    for task, members in by_task.items():
        paths = [trace_config(g.runs[0].config, g.name) for g in members]
        task_options = {k.split(".", 1)[1]: v for k, v in members[0].config.items()
                        if k.startswith("task.")}
        written.append(trajectory_figure(task, paths, out / f"trajectories_{task}.png",
                                         task_options))
    return written


def _markdown(report: Report, column: str, command: str, default_target_used: bool) -> str:
    groups, runs = report.groups, report.runs
    has_acc = any(g.stats["final_eval_acc"].n for g in groups) or any(
        run.series("eval/acc") for run in runs[:1])
    lines = [f"# Report: {report.root}", "",
             f"Produced by `{command}`.", "",
             f"{len(runs)} run(s) in {len(groups)} group(s) (runs grouped by their config "
             f"minus the seed)."]
    statuses: dict[str, int] = {}
    for run in runs:
        statuses[run.status] = statuses.get(run.status, 0) + 1
    lines.append("Status: " + ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())) + ".")
    incomplete = report.incomplete_line()
    if incomplete:
        lines += ["", f"**{incomplete[0].upper() + incomplete[1:]}.** The tables below cover "
                  "the finished runs; run `gen-report` again when the sweep is done."]
    shared = {k: v for k, v in groups[0].config.items()
              if all(g.config.get(k) == v for g in groups)}
    if shared:
        wanted = [k for k in ("task.name", "model.name", "optimizer.name", "lr.name",
                              "optimizer.lr", "trainer.epochs", "trainer.max_steps",
                              "trainer.batch_size", "trainer.device", "trainer.amp") if k in shared]
        if wanted:
            lines += ["", "Shared by every group: " + ", ".join(
                f"`{k}={format_value(shared[k])}`" for k in wanted) + "."]
    lines += ["", "## Results", ""]
    if report.target:
        how = (" (default: 95% of the best group's mean final eval accuracy; set with "
               "`--target eval/acc=VALUE`)" if default_target_used else "")
        lines.append(f"Target: `{report.target}`{how}. Steps and time to target are means over "
                     "the runs that reached it (`reached` counts them); time is wall-clock since "
                     "the run's event file was opened, evaluation included.")
    else:
        lines.append("No target: the runs log no eval accuracy (set one with "
                     "`--target eval/loss=VALUE`).")
    lines += ["", "Cells are mean ± std over seeds (sample std) with the number of runs n. "
              "Quality metrics average the completed runs only; diverged, failed, "
              "interrupted and unfinished runs are counted in `runs`, never dropped.", "",
              results_table(groups, report.target, has_acc), "", "## Cost", "",
              "Step time is the median over runs of each run's mean `time/step_ms` (lazy probe steps included); "
              "`× base` divides it by the same config with `lr=constant` in this report. "
              "Passes are counted forward/backward/Hessian-vector products per training step. "
              "On CPU, peak memory is the process's max RSS, which only grows across the jobs "
              "of one `gen-train -m` process: compare it within single runs.", "",
              cost_table(groups)]
    if report.best and any(len(ranked) > 1 for _, ranked in report.best):
        lines += ["", f"## Best setting per method (by mean {column.replace('_', ' ')})", "",
                  "Groups with a diverged, failed or interrupted run rank after those "
                  "without one. Re-run the best setting over seeds (see docs/experiments.md).",
                  ""]
        keys = varying_keys(g.config for g in groups)
        rows = []
        for best, ranked in report.best:
            overrides = " ".join(f"{k}={format_value(best.config[k])}" for k in keys
                                 if k in best.config and not k.endswith(".name"))
            rows.append([f"{best.method[0]} + {best.method[1]}", best.name,
                         best.stats[column].text(), len(ranked), f"`{overrides}`" if overrides else "—"])
        lines.append(markdown_table(["method", "best group", column.replace("_", " "),
                                     "settings tried", "overrides"], rows))
    figures = [p for p in report.files if p.suffix == ".png"]
    if figures:
        lines += ["", "## Figures", ""]
        lines += [f"![{p.stem}]({p.name})" for p in figures]
    lines += ["", "## Runs", ""]
    rows = []
    for group in groups:
        for run in group.runs:
            message = (run.summary or {}).get("message") or ""
            status = "running/incomplete" if run.summary is None else run.status
            rows.append([_rel(run.path, report.root), group.name, run.seed, status,
                         (run.summary or {}).get("steps", "—"), message[:80]])
    lines.append(markdown_table(["run", "group", "seed", "status", "steps", "message"], rows))
    return "\n".join(lines) + "\n"


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root)) or "."
    except ValueError:
        return str(path)
