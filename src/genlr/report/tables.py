"""``report.csv`` (one row per group, machine-readable) and the markdown tables of
``report.md``."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .groups import STATUS_COLUMNS, Group, Target, format_value

STAT_COLUMNS = ("final_eval_acc", "final_eval_loss", "best_eval_acc", "best_eval_loss",
                "final_train_loss", "steps_to_target", "time_to_target_s", "steps",
                "wall_time_s", "forward_per_step", "backward_per_step", "hvp_per_step",
                "peak_memory_mb", "lr_final")


def csv_columns(config_keys: Sequence[str]) -> list[str]:
    columns = ["group", "task", "model", "optimizer", "lr_method", *config_keys, "n_runs"]
    columns += [f"n_{status}" for status in STATUS_COLUMNS]
    columns += ["target", "n_reached_target"]
    for name in STAT_COLUMNS:
        columns += [f"{name}_mean", f"{name}_std", f"{name}_n"]
    columns += ["step_time_ms", "step_cost_ratio", "cost_reference", "run_dirs"]
    return columns


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # full precision: the CSV is for machines
    return value


def csv_row(group: Group, config_keys: Sequence[str], target: Target | None,
            root: Path) -> dict[str, Any]:
    c = group.config
    row: dict[str, Any] = {
        "group": group.name, "task": c.get("task.name"), "model": c.get("model.name"),
        "optimizer": c.get("optimizer.name"), "lr_method": c.get("lr.name"),
        "n_runs": len(group.runs),
        "target": str(target) if target else None,
        "n_reached_target": group.reached if target else None,
        "step_time_ms": group.step_ms, "step_cost_ratio": group.cost_ratio,
        "cost_reference": group.reference,
        "run_dirs": ";".join(_relative(run.path, root) for run in group.runs),
    }
    for key in config_keys:
        row[key] = format_value(c[key]) if key in c else None
    for status in STATUS_COLUMNS:
        row[f"n_{status}"] = group.counts.get(status, 0)
    for name in STAT_COLUMNS:
        stat = group.stats.get(name)
        row[f"{name}_mean"] = stat.mean if stat else None
        row[f"{name}_std"] = stat.std if stat else None
        row[f"{name}_n"] = stat.n if stat else 0
    return {key: _cell(value) for key, value in row.items()}


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root)) or "."
    except ValueError:
        return str(path)


def write_csv(path: Path, groups: Sequence[Group], config_keys: Sequence[str],
              target: Target | None, root: Path) -> Path:
    columns = csv_columns(config_keys)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for group in groups:
            writer.writerow(csv_row(group, config_keys, target, root))
    return path


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def clean(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(clean, header)) + " |",
             "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(map(clean, row)) + " |" for row in rows]
    return "\n".join(lines)


def _status_text(group: Group) -> str:
    counts = group.counts
    parts = [f"{counts.get('completed', 0)}/{len(group.runs)} completed"]
    for status in STATUS_COLUMNS[1:]:
        if counts.get(status):
            label = "running/incomplete" if status == "incomplete" else status
            parts.append(f"{counts[status]} {label}")
    return ", ".join(parts)


def _num(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def results_table(groups: Sequence[Group], target: Target | None, has_acc: bool) -> str:
    header = ["group", "runs"]
    if has_acc:
        header += ["final eval acc", "best eval acc"]
    header += ["final eval loss", "best eval loss"]
    if target:
        header += [f"steps to {target}", "time to target (s)", "reached"]
    rows = []
    for g in groups:
        s = g.stats
        row = [g.name, _status_text(g)]
        if has_acc:
            row += [s["final_eval_acc"].text(), s["best_eval_acc"].text()]
        row += [s["final_eval_loss"].text(), s["best_eval_loss"].text()]
        if target:
            finished = len(g.finished)
            row += [s["steps_to_target"].text(show_n=False),
                    s["time_to_target_s"].text(3, show_n=False),
                    f"{g.reached}/{finished}" if finished else "—"]
        rows.append(row)
    return markdown_table(header, rows)


def cost_table(groups: Sequence[Group]) -> str:
    header = ["group", "step time (ms, mean)", "× base", "base", "fwd / bwd / hvp per step",
              "steps", "wall time (s)", "peak memory (MB)"]
    rows = []
    for g in groups:
        s = g.stats
        passes = " / ".join(_num(s[f"{k}_per_step"].mean, ".2f") for k in ("forward", "backward", "hvp"))
        rows.append([g.name, _num(g.step_ms, ".1f"), _num(g.cost_ratio, ".2f"),
                     g.reference or "—", passes, s["steps"].text(show_n=False),
                     s["wall_time_s"].text(3, show_n=False),
                     _num(s["peak_memory_mb"].mean, ".0f")])
    return markdown_table(header, rows)
