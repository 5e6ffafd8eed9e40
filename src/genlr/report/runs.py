"""Finding the runs under a folder and reading what each left behind.

A run is a folder holding ``summary.json`` (a finished run, whatever its status) or only
``.hydra/config.yaml`` (a sweep job that has started but not finished: reported as
``incomplete``). Its configuration is the composed ``.hydra/config.yaml``; a run without
one (trained through the library, not ``gen-train``) falls back to the names in
``summary.json``. Curves come from the TensorBoard events, every point kept.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genlr.options import flatten_config
from genlr.tracking import read_scalars, read_summary
from genlr.tracking.summary import SUMMARY_FILENAME
from genlr.tracking.tensorboard import TB_DIRNAME

HYDRA_CONFIG = Path(".hydra") / "config.yaml"
INCOMPLETE = "incomplete"


class NoRunsError(ValueError):
    """The path is missing, is not a folder, or holds no runs. The message is one line."""


@dataclass
class RunRecord:
    """One run: where it is, its flattened config, its summary (None if unfinished)."""

    path: Path
    config: dict[str, Any]
    summary: dict[str, Any] | None
    _scalars: dict[str, list[tuple[int, float, float]]] | None = field(default=None, repr=False)
    _start: float | None = field(default=None, repr=False)

    @property
    def status(self) -> str:
        if self.summary is None:
            return INCOMPLETE
        return str(self.summary.get("status") or "failed")

    @property
    def seed(self) -> Any:
        return self.config.get("seed", (self.summary or {}).get("seed"))

    def scalars(self) -> dict[str, list[tuple[int, float, float]]]:
        """Every point of every tag: ``{tag: [(step, wall_time, value)]}`` (cached)."""
        if self._scalars is None:
            self._scalars = read_scalars(self.path)
        return self._scalars

    def start_time(self) -> float | None:
        """Wall-clock time the run's event file was opened (before the first step), so that
        "time since start" counts training and evaluation but not imports or data loading
        done before the writer existed. Falls back to the earliest scalar's time."""
        if self._start is None:
            self._start = _first_event_time(self.path / TB_DIRNAME)
            if self._start is None:
                times = [t for points in self.scalars().values() for _, t, _ in points]
                self._start = min(times) if times else None
        return self._start

    def series(self, tag: str) -> list[tuple[int, float, float]]:
        """``(step, seconds since start, value)`` of ``tag``, non-finite values dropped."""
        start = self.start_time() or 0.0
        return [(s, t - start, v) for s, t, v in self.scalars().get(tag, [])
                if v is not None and math.isfinite(v)]


def _first_event_time(events_dir: Path) -> float | None:
    if not events_dir.is_dir():
        return None
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    times = []
    for path in events_dir.glob("events.out.tfevents.*"):
        try:
            for event in EventFileLoader(str(path)).Load():
                times.append(event.wall_time)
                break
        except Exception:  # a truncated file of a live run: its scalars still count
            continue
    return min(times) if times else None


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A config as dotted keys (``flatten_config``), lists as tuples (hashable)."""
    return {key: tuple(value) if isinstance(value, list) else value
            for key, value in flatten_config(config, prefix).items()}


def _config_from_hydra(path: Path) -> dict[str, Any] | None:
    file = path / HYDRA_CONFIG
    if not file.is_file():
        return None
    from omegaconf import OmegaConf

    try:
        container = OmegaConf.to_container(OmegaConf.load(file), resolve=False)
    except Exception:
        return None
    return flatten(container) if isinstance(container, dict) else None


def _config_from_summary(summary: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {
        "task.name": summary.get("task"), "model.name": summary.get("model"),
        "optimizer.name": summary.get("optimizer"), "lr.name": summary.get("lr_method"),
        "seed": summary.get("seed"),
    }
    if isinstance(summary.get("trainer"), dict):
        config.update(flatten(summary["trainer"], "trainer."))
    return config


def is_run_dir(path: Path) -> bool:
    return (path / SUMMARY_FILENAME).is_file() or (path / HYDRA_CONFIG).is_file()


def discover(root: str | os.PathLike) -> list[Path]:
    """Run folders at or under ``root``: those with ``summary.json`` or
    ``.hydra/config.yaml`` (a job that started), sorted with sweep job numbers in
    numeric order. A Hydra sweep's own ``multirun.yaml`` folder is not a run."""
    root = Path(root)
    found = {file.parent for file in root.rglob(SUMMARY_FILENAME) if file.is_file()}
    found |= {file.parent.parent for file in root.rglob("config.yaml")
              if file.parent.name == ".hydra" and file.is_file()}

    def key(path: Path):
        return [(0, int(part), "") if part.isdigit() else (1, 0, part)
                for part in path.relative_to(root).parts]

    return sorted(found, key=key)


def load_runs(root: str | os.PathLike) -> list[RunRecord]:
    """Every run at or under ``root``; raises :class:`NoRunsError` (one line) if there is
    nothing to report."""
    root = Path(root)
    if not root.exists():
        raise NoRunsError(f"no runs under {root} (the path does not exist)")
    if not root.is_dir():
        raise NoRunsError(f"no runs under {root} (it is a file, not a run or sweep folder)")
    runs = []
    for path in discover(root):
        summary = None
        if (path / SUMMARY_FILENAME).is_file():
            try:
                summary = read_summary(path)
            except (OSError, ValueError):
                summary = None  # being written or damaged: treat as unfinished
        config = _config_from_hydra(path)
        if config is None:
            if summary is None:
                continue
            config = _config_from_summary(summary)
        runs.append(RunRecord(path=path, config=config, summary=summary))
    if not runs:
        raise NoRunsError(f"no runs under {root} (looked for summary.json / .hydra/config.yaml)")
    return runs


def expected_jobs(root: str | os.PathLike) -> int | None:
    """How many jobs the Hydra sweep at ``root`` asked for (from its ``multirun.yaml``:
    the command line's sweep overrides and ``hydra.sweeper.params``), or None if unknown."""
    file = Path(root) / "multirun.yaml"
    if not file.is_file():
        return None
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(file)
        by_key: dict[str, str] = {}
        params = OmegaConf.select(cfg, "hydra.sweeper.params")
        if params:
            for key, value in OmegaConf.to_container(params).items():
                by_key[key] = f"{key}={value}"
        for line in OmegaConf.select(cfg, "hydra.overrides.task") or []:
            by_key[line.split("=", 1)[0].lstrip("+~")] = line
        total = 1
        for override in OverridesParser.create().parse_overrides(list(by_key.values())):
            if override.is_sweep_override():
                total *= len(list(override.sweep_string_iterator()))
        return total
    except Exception:
        return None
