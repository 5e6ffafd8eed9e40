"""Grouping runs by everything but the seed, naming groups by what differs, and reducing
each group to the numbers of the report (mean ± std over seeds, counts by status)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from genlr.options import refusal

from .runs import INCOMPLETE, RunRecord

# Keys that never change a result: the seed (what a group averages over), how a run
# reports or saves itself, and what a sweeper would tune it for.
IGNORED_KEYS = frozenset({
    "seed", "trainer.progress", "trainer.plots", "trainer.log_every",
    "trainer.checkpoint_every", "trainer.profile_every", "trainer.eval_batch_size",
    "trainer.overwrite", "objective", "lr_range",
})
# Order of keys in a group's name; the rest follow alphabetically.
NAME_ORDER = ("task.name", "model.name", "optimizer.name", "lr.name", "optimizer.lr")
SHORT = {"task.name": "task", "model.name": "model", "optimizer.name": "optimizer",
         "lr.name": "lr"}
STATUS_COLUMNS = ("completed", "diverged", "failed", "interrupted", INCOMPLETE)


def group_key(run: RunRecord) -> tuple:
    return tuple(sorted((k, v) for k, v in run.config.items() if k not in IGNORED_KEYS))


def varying_keys(configs: Iterable[dict[str, Any]]) -> list[str]:
    """The keys that tell the configs apart, in name order.

    A component's option (``lr.every``, ``task.x0``) counts only if it varies among
    configs with the same component (``lr.name``, ``task.name``): the different defaults
    of different methods are implied by the method's name. Other keys count if they take
    more than one value among the configs that have them.
    """
    configs = list(configs)
    values: dict[str, dict[Any, set]] = {}
    for config in configs:
        for key, value in config.items():
            if key in IGNORED_KEYS:
                continue
            component = key.split(".", 1)[0]
            owner = config.get(f"{component}.name") if key != f"{component}.name" else None
            values.setdefault(key, {}).setdefault(_hashable(owner), set()).add(_hashable(value))
    keys = [key for key, by_owner in values.items()
            if any(len(seen) > 1 for seen in by_owner.values())]
    return sorted(keys, key=lambda k: (NAME_ORDER.index(k) if k in NAME_ORDER else len(NAME_ORDER), k))


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    return str(value)


def group_name(config: dict[str, Any], keys: Sequence[str]) -> str:
    parts = [f"{SHORT.get(k, k)}={format_value(config[k])}" for k in keys if k in config]
    if parts:
        return " ".join(parts)
    # One group: name it by what it is.
    return " ".join(f"{SHORT[k]}={config[k]}" for k in NAME_ORDER[:4] if config.get(k) is not None)


@dataclass
class Stat:
    """Mean, sample standard deviation (n-1; None for n < 2) and count of the finite values."""

    mean: float | None
    std: float | None
    n: int

    @classmethod
    def of(cls, values: Iterable[float | None]) -> "Stat":
        finite = [float(v) for v in values if v is not None and math.isfinite(v)]
        if not finite:
            return cls(None, None, 0)
        std = statistics.stdev(finite) if len(finite) > 1 else None
        return cls(statistics.fmean(finite), std, len(finite))

    def text(self, digits: int = 4, show_n: bool = True) -> str:
        if self.mean is None:
            return "—"
        text = f"{self.mean:.{digits}g}"
        if self.std is not None:
            text += f" ± {self.std:.2g}"
        return f"{text} (n={self.n})" if show_n else text


@dataclass
class Target:
    """A level of an eval metric: reached when ``>=`` value (accuracy) or ``<=`` (a loss)."""

    tag: str
    value: float

    @property
    def lower_is_better(self) -> bool:
        return "loss" in self.tag or "gap" in self.tag or "distance" in self.tag

    def reached(self, value: float) -> bool:
        return value <= self.value if self.lower_is_better else value >= self.value

    def __str__(self) -> str:
        return f"{self.tag}{'<=' if self.lower_is_better else '>='}{self.value:g}"

    @classmethod
    def parse(cls, text: str) -> "Target":
        tag, sep, value = text.partition("=")
        tag = tag.strip().rstrip("<>")
        if not sep or not tag:
            raise ValueError(f"--target must look like eval/acc=0.85, got {text!r}")
        try:
            return cls(tag if "/" in tag else f"eval/{tag}", float(value))
        except ValueError:
            raise ValueError(f"--target value must be a number, got {value!r}") from None


def time_to_target(run: RunRecord, target: Target) -> tuple[int, float] | None:
    """First (step, seconds since start) at which the run's ``target.tag`` reached the
    target, or None."""
    for step, seconds, value in run.series(target.tag):
        if target.reached(value):
            return step, seconds
    return None


def _get(summary: dict[str, Any] | None, *path: str) -> Any:
    node: Any = summary or {}
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def _best_value(summary: dict[str, Any] | None, key: str) -> Any:
    best = _get(summary, "best", key)
    return best.get("value") if isinstance(best, dict) else best


@dataclass
class Group:
    """Runs that differ only in the seed (and in keys that cannot change a result)."""

    name: str
    config: dict[str, Any]  # the shared config (no seed)
    runs: list[RunRecord]
    stats: dict[str, Stat] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    reached: int = 0  # runs that reached the target
    step_ms: float | None = None  # median over runs of each run's mean step time
    cost_ratio: float | None = None
    reference: str | None = None  # the group cost_ratio is relative to

    @property
    def finished(self) -> list[RunRecord]:
        return [run for run in self.runs if run.summary is not None]

    @property
    def completed(self) -> list[RunRecord]:
        return [run for run in self.runs if run.status == "completed"]

    @property
    def method(self) -> tuple[str, str]:
        return (str(self.config.get("optimizer.name")), str(self.config.get("lr.name")))

    @property
    def has_problems(self) -> bool:
        return any(self.counts.get(s, 0) for s in ("diverged", "failed", "interrupted"))


def make_groups(runs: Sequence[RunRecord]) -> list[Group]:
    """Runs grouped by config minus seed, in the order their first run appears."""
    keys = varying_keys(run.config for run in runs)
    by_key: dict[tuple, Group] = {}
    for run in runs:
        key = group_key(run)
        if key not in by_key:
            config = {k: v for k, v in run.config.items() if k not in IGNORED_KEYS}
            by_key[key] = Group(group_name(config, keys), config, [])
        by_key[key].runs.append(run)
    groups = list(by_key.values())
    _disambiguate(groups)
    return groups


def _disambiguate(groups: list[Group]) -> None:
    seen: dict[str, int] = {}
    for group in groups:
        seen[group.name] = seen.get(group.name, 0) + 1
    counter: dict[str, int] = {}
    for group in groups:
        if seen[group.name] > 1:
            counter[group.name] = counter.get(group.name, 0) + 1
            group.name = f"{group.name} #{counter[group.name]}"


# The metrics summarised over seeds: column prefix -> how to read it from a run.
METRICS = {
    "final_eval_acc": lambda r: _get(r.summary, "final", "eval_acc"),
    "best_eval_acc": lambda r: _best_value(r.summary, "eval_acc"),
    "final_eval_loss": lambda r: _get(r.summary, "final", "eval_loss"),
    "best_eval_loss": lambda r: _best_value(r.summary, "eval_loss"),
    "final_train_loss": lambda r: _get(r.summary, "final", "train_loss"),
}


def _per_step(run: RunRecord, kind: str) -> float | None:
    steps = _get(run.summary, "steps")
    count = _get(run.summary, "passes", kind)
    if not steps or count is None:
        return None
    return count / steps


def summarise(groups: Sequence[Group], target: Target | None,
              reference_of: Callable[[Group], Group | None] | None = None) -> None:
    """Fill each group's stats, counts, time to target and cost relative to its reference:
    ``reference_of(group)``, by default the same config at ``lr=constant``
    (``same_config_at_constant_lr``).

    Quality metrics (final/best accuracy and loss) average the *completed* runs; diverged,
    failed, interrupted and incomplete runs are counted in their own columns, never
    dropped, and the ``n`` beside each mean says how many runs it is over. Cost metrics
    (step time, passes per step, memory) average every finished run.
    """
    for group in groups:
        group.counts = {status: 0 for status in STATUS_COLUMNS}
        for run in group.runs:
            group.counts[run.status] = group.counts.get(run.status, 0) + 1
        completed, finished = group.completed, group.finished
        for name, read in METRICS.items():
            group.stats[name] = Stat.of(read(run) for run in completed)
        group.stats["steps"] = Stat.of(_get(r.summary, "steps") for r in finished)
        group.stats["wall_time_s"] = Stat.of(_get(r.summary, "wall_time_s") for r in finished)
        group.stats["peak_memory_mb"] = Stat.of(_get(r.summary, "peak_memory_mb") for r in finished)
        group.stats["lr_final"] = Stat.of(_get(r.summary, "lr", "final") for r in finished)
        for kind in ("forward", "backward", "hvp"):
            group.stats[f"{kind}_per_step"] = Stat.of(_per_step(r, kind) for r in finished)
        # Each run's mean step time: the amortised cost, lazy probe steps included (a
        # median would hide them); older summaries without a mean fall back to the median.
        means = [m for m in (_get(r.summary, "step_time_ms", "mean")
                             or _get(r.summary, "step_time_ms", "median") for r in finished)
                 if m is not None and math.isfinite(m)]
        group.step_ms = statistics.median(means) if means else None
        group.reached = 0
        hits = []
        if target is not None:
            for run in finished:
                hit = time_to_target(run, target)
                if hit is not None:
                    hits.append(hit)
        group.reached = len(hits)
        group.stats["steps_to_target"] = Stat.of(step for step, _ in hits)
        group.stats["time_to_target_s"] = Stat.of(seconds for _, seconds in hits)
    reference_of = reference_of or same_config_at_constant_lr(groups)
    for group in groups:
        reference = reference_of(group)
        group.cost_ratio = cost_ratio(group, reference)
        group.reference = reference.name if group.cost_ratio is not None else None


def cost_ratio(group: Group, reference: Group | None) -> float | None:
    """A step of ``group`` over a step of ``reference`` (mean step times): what the report
    and the leaderboard call a step's cost. None where either was not measured."""
    if reference is None or not reference.step_ms or group.step_ms is None:
        return None
    return group.step_ms / reference.step_ms


def base_key(config: dict[str, Any]) -> tuple:
    """The config with the lr method replaced by ``constant`` (its options dropped)."""
    kept = {k: v for k, v in config.items() if not k.startswith("lr.")}
    kept["lr.name"] = "constant"
    return tuple(sorted(kept.items(), key=lambda kv: kv[0]))


def same_config_at_constant_lr(groups: Sequence[Group]) -> Callable[[Group], Group | None]:
    """The group each group's cost is relative to in a report: the same config with
    ``lr=constant``, where the report has it."""
    bases = {base_key(g.config): g for g in groups if g.config.get("lr.name") == "constant"}
    return lambda group: bases.get(base_key(group.config))


def default_target(groups: Sequence[Group]) -> Target | None:
    """95% of the best group's mean final eval accuracy (rounded down to 0.001), so every
    report has a target that some method reached; None without eval accuracy."""
    means = [g.stats["final_eval_acc"].mean for g in groups if g.stats.get("final_eval_acc")]
    means = [m for m in means if m is not None]
    if not means:
        return None
    return Target("eval/acc", math.floor(0.95 * max(means) * 1000) / 1000)


def best_per_method(groups: Sequence[Group], metric: str) -> list[tuple[Group, list[Group]]]:
    """For each (optimizer, lr method), the group with the best mean of ``metric``
    (e.g. ``final_eval_acc``) and the groups it beat. Groups with a diverged, failed or
    interrupted run rank after every group without one."""
    lower = "loss" in metric
    by_method: dict[tuple[str, str], list[Group]] = {}
    for group in groups:
        if group.stats.get(metric) and group.stats[metric].mean is not None:
            by_method.setdefault(group.method, []).append(group)
    result = []
    for candidates in by_method.values():
        ranked = sorted(candidates, key=lambda g: (g.has_problems,
                                                   g.stats[metric].mean * (1 if lower else -1)))
        result.append((ranked[0], ranked))
    return result


def metric_column(tag: str) -> str:
    """``eval/acc`` -> ``final_eval_acc`` (also accepts ``final_eval_acc`` itself)."""
    name = tag.replace("/", "_")
    if name in METRICS:
        return name
    column = f"final_{name}"
    if column not in METRICS:
        allowed = [k.replace("final_", "").replace("_", "/", 1) if k.startswith("final_") else k
                   for k in METRICS]
        raise ValueError(refusal("--best-by", allowed, tag))
    return column
