"""``summary.json``: the one-object record of a run that tests and ``gen-report`` read.

The contract (docs/design.md, "What a run leaves behind") is the keys below; add keys freely,
never rename these. Non-finite floats (a diverged loss) are written as ``null`` so the file
is strict JSON that any reader accepts.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import secrets
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

SUMMARY_FILENAME = "summary.json"

STATUSES = ("completed", "diverged", "interrupted", "failed")

# Top-level keys every summary.json carries, in the order they are written.
REQUIRED_KEYS = (
    "task",
    "model",
    "optimizer",
    "lr_method",
    "seed",
    "status",
    "steps",
    "epochs",
    "wall_time_s",
    "train_time_s",
    "step_time_ms",
    "peak_memory_mb",
    "passes",
    "final",
    "best",
    "lr",
    "device",
    "amp",
    "torch_version",
)

# The sub-keys the contract fixes inside the nested objects (``best`` is open-ended).
REQUIRED_SUBKEYS = {
    "step_time_ms": ("median", "p90"),
    "passes": ("forward", "backward", "hvp"),
    "final": ("train_loss", "eval_loss", "eval_acc"),
    "lr": ("initial", "final", "min", "max"),
}


def build_summary(stats: RunStats, *, components: Mapping[str, str], seed: int, status: str,
                  message: str, steps: int, epochs: float, wall_time_s: float,
                  peak_memory_mb: float | None, method_passes: Mapping[str, int], device: str,
                  amp: str, torch_version: str, world_size: int,
                  trainer: Mapping[str, Any], checkpoint_step: int | None = None,
                  method_fields: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The summary of a run: the contract keys in ``REQUIRED_KEYS`` order, then the others.

    ``components`` names the task, model, optimizer and lr method (``lr_method``);
    ``method_passes`` are the lr method's extra passes, to which the training step's own
    forward and backward are added here (``passes`` counts every pass the run made);
    ``checkpoint_step`` is the step ``checkpoints/last.pt`` holds (a diverged run's is
    before its last step); ``method_fields`` is what the lr method reports over the run
    (``summary_fields()``).
    """
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    return {
        **{key: components[key] for key in ("task", "model", "optimizer", "lr_method")},
        "seed": seed, "status": status, "steps": steps, "epochs": epochs,
        "wall_time_s": wall_time_s, "train_time_s": stats.train_time_s(),
        "step_time_ms": stats.step_time_ms(), "peak_memory_mb": peak_memory_mb,
        "passes": {"forward": steps + method_passes["forward"],
                   "backward": steps + method_passes["backward"], "hvp": method_passes["hvp"]},
        "final": stats.final(), "best": stats.best(), "lr": stats.lr_summary(),
        "device": device, "amp": amp, "torch_version": torch_version,
        "world_size": world_size, "python_version": platform.python_version(),
        "message": message, "checkpoint_step": checkpoint_step, "trainer": dict(trainer),
        **(method_fields or {}),
    }


def missing_keys(summary: Mapping[str, Any]) -> list[str]:
    """The contract keys absent from ``summary``, as dotted paths (``"lr.min"``)."""
    missing = [key for key in REQUIRED_KEYS if key not in summary]
    for key, subkeys in REQUIRED_SUBKEYS.items():
        nested = summary.get(key)
        if isinstance(nested, Mapping):
            missing += [f"{key}.{sub}" for sub in subkeys if sub not in nested]
    return missing


def to_json_safe(value: Any) -> Any:
    """``value`` as plain JSON types: non-finite floats become None, tensors and numpy
    scalars become numbers, paths and unknown objects become strings."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): to_json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_json_safe(v) for v in value]
    # torch tensors and numpy scalars/arrays both offer .tolist(); checked by duck typing
    # so this module does not import either.
    if hasattr(value, "tolist"):
        return to_json_safe(value.tolist())
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def write_summary(run_dir: str | os.PathLike, summary: Mapping[str, Any]) -> Path:
    """Write ``<run_dir>/summary.json`` atomically and return its path.

    Atomic (temporary file + ``os.replace``) so that a run killed mid-write, or a report
    reading a live sweep, never sees half a file. Missing contract keys are not an error
    here: a crashing run should still leave what it knows (``missing_keys`` checks).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / SUMMARY_FILENAME
    text = json.dumps(to_json_safe(summary), indent=2, allow_nan=False) + "\n"
    # Not mkstemp: its files are 0600; this one is created under the umask, like any file.
    tmp = run_dir / f".summary-{os.getpid()}-{secrets.token_hex(4)}.json.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_summary(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Read ``<run_dir>/summary.json`` (``run_dir`` may also be the file itself)."""
    path = Path(run_dir)
    if path.is_dir():
        path = path / SUMMARY_FILENAME
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _finite(values: Iterable[float]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), without numpy."""
    position = (len(sorted_values) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


class RunStats:
    """Accumulates what a run saw, step by step, and condenses it for ``summary.json``.

    The engine calls ``record_step`` after every optimizer step and ``record_eval`` after
    every evaluation; ``build_summary`` condenses it into the ``train_time_s``,
    ``step_time_ms``, ``lr``, ``final`` and ``best`` entries, and ``history()`` gives the
    curves for ``write_plots``.

    The learning rate summarised is param group 0's (the one logged as ``train/lr``);
    every group's trace is kept for the plots. ``state_dict()`` / ``load_state_dict()``
    carry it through a checkpoint.
    """

    SERIES = ("train_loss", "eval_loss", "eval_acc", "step_ms", "lrs", "method_lr")

    def __init__(self) -> None:
        self.train_loss: list[tuple[int, float]] = []
        self.eval_loss: list[tuple[int, float]] = []
        self.eval_acc: list[tuple[int, float]] = []
        self.step_ms: list[tuple[int, float]] = []
        self.lrs: list[tuple[int, list[float]]] = []
        # the lr method's own lr where it differs from the applied one (GeN's, before the
        # horizon scale), for lr.png
        self.method_lr: list[tuple[int, float]] = []

    def state_dict(self) -> dict[str, list]:
        """Every recorded series, as plain lists (what a checkpoint stores)."""
        return {name: [list(point) for point in getattr(self, name)] for name in self.SERIES}

    def load_state_dict(self, state: Mapping[str, Sequence]) -> None:
        for name in self.SERIES:  # a checkpoint from before method_lr has none
            setattr(self, name, [tuple(point) for point in state.get(name, ())])

    def train_time_s(self) -> float:
        """Seconds spent in training steps (the recorded step times), over every attempt."""
        return sum(ms for _, ms in self.step_ms) / 1e3

    def record_step(
        self,
        step: int,
        *,
        train_loss: float | None = None,
        lr: float | Sequence[float] | None = None,
        step_ms: float | None = None,
        method_lr: float | None = None,
    ) -> None:
        """Record one training step; ``lr`` is one float or one per param group,
        ``method_lr`` the method's own lr before a horizon scale (None: the same)."""
        if train_loss is not None:
            self.train_loss.append((step, float(train_loss)))
        if lr is not None:
            group_lrs = [float(v) for v in lr] if isinstance(lr, Sequence) else [float(lr)]
            self.lrs.append((step, group_lrs))
        if step_ms is not None:
            self.step_ms.append((step, float(step_ms)))
        if method_lr is not None:
            self.method_lr.append((step, float(method_lr)))

    def record_eval(
        self, step: int, *, eval_loss: float | None = None, eval_acc: float | None = None
    ) -> None:
        """Record one evaluation made after ``step`` training steps."""
        if eval_loss is not None:
            self.eval_loss.append((step, float(eval_loss)))
        if eval_acc is not None:
            self.eval_acc.append((step, float(eval_acc)))

    def step_time_ms(self) -> dict[str, float | None]:
        """Median, 90th percentile and mean of the recorded step times (ms). The mean is the
        amortised cost of methods that do extra work every few steps (lazy probes)."""
        times = sorted(_finite(ms for _, ms in self.step_ms))
        if not times:
            return {"median": None, "p90": None, "mean": None}
        return {"median": statistics.median(times), "p90": _percentile(times, 0.9),
                "mean": statistics.fmean(times)}

    def lr_summary(self) -> dict[str, float | None]:
        """Initial, final, min and max learning rate of param group 0."""
        trace = [group_lrs[0] for _, group_lrs in self.lrs if group_lrs]
        finite = _finite(trace)
        if not trace:
            return {"initial": None, "final": None, "min": None, "max": None}
        return {
            "initial": trace[0],
            "final": trace[-1],
            "min": min(finite) if finite else None,
            "max": max(finite) if finite else None,
        }

    def final(self) -> dict[str, float | None]:
        """The last recorded value of each metric (None if never recorded)."""

        def last(points: list[tuple[int, float]]) -> float | None:
            return points[-1][1] if points else None

        return {
            "train_loss": last(self.train_loss),
            "eval_loss": last(self.eval_loss),
            "eval_acc": last(self.eval_acc),
        }

    def best(self) -> dict[str, dict[str, float | int] | None]:
        """Best value of each metric and the step it was reached at (first occurrence);
        lowest loss, highest accuracy. Non-finite values never count as best."""

        def extreme(points: list[tuple[int, float]], pick) -> dict[str, float | int] | None:
            finite = [(s, v) for s, v in points if math.isfinite(v)]
            if not finite:
                return None
            step, value = pick(finite, key=lambda point: point[1])
            return {"value": value, "step": step}

        return {
            "train_loss": extreme(self.train_loss, min),
            "eval_loss": extreme(self.eval_loss, min),
            "eval_acc": extreme(self.eval_acc, max),
        }

    def history(self) -> dict[str, list[tuple[int, float]]]:
        """The recorded curves as a ``History`` (tag -> [(step, value)]), the same tags
        the TensorBoard events carry, so plots read either source alike."""
        history: dict[str, list[tuple[int, float]]] = {
            "train/loss": list(self.train_loss),
            "eval/loss": list(self.eval_loss),
            "eval/acc": list(self.eval_acc),
            "time/step_ms": list(self.step_ms),
            "train/lr": [(s, lrs[0]) for s, lrs in self.lrs if lrs],
            "method/gen_lr": list(self.method_lr),
        }
        n_groups = max((len(lrs) for _, lrs in self.lrs), default=0)
        if n_groups > 1:
            for i in range(n_groups):
                history[f"lr/group{i}"] = [(s, lrs[i]) for s, lrs in self.lrs if len(lrs) > i]
        return {tag: points for tag, points in history.items() if points}
