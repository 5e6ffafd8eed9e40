"""Reading runs back: their TensorBoard scalars, and where the runs under a folder are."""

from __future__ import annotations

import os
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from .summary import SUMMARY_FILENAME
from .tensorboard import TB_DIRNAME

# tag -> [(step, wall_time, value)], every point in step order as it was logged.
Scalars = dict[str, list[tuple[int, float, float]]]


def _events_dir(path: str | os.PathLike) -> Path:
    """A run directory's ``tb/`` folder, or ``path`` itself if it already is one."""
    path = Path(path)
    return path / TB_DIRNAME if (path / TB_DIRNAME).is_dir() else path


def read_scalars(run_dir_or_tb_dir: str | os.PathLike) -> Scalars:
    """Every scalar point a run logged, by tag: ``{tag: [(step, wall_time, value)]}``.

    Accepts the run directory or its ``tb/`` folder. All points are kept
    (``size_guidance`` 0); TensorBoard's default would silently subsample to 10,000.
    Several event files in the folder (a resumed run) are read in order as one run.
    Returns an empty dict if the folder has no events.
    """
    events_dir = _events_dir(run_dir_or_tb_dir)
    if not events_dir.is_dir():
        return {}
    accumulator = EventAccumulator(str(events_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {
        tag: [(event.step, event.wall_time, event.value) for event in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }


def read_history(run_dir_or_tb_dir: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """The run's scalars as a ``History`` (tag -> [(step, value)]) for ``write_plots``."""
    return {
        tag: [(step, value) for step, _, value in points]
        for tag, points in read_scalars(run_dir_or_tb_dir).items()
    }


def find_runs(root: str | os.PathLike) -> list[Path]:
    """The run directories at or under ``root`` (those holding ``summary.json``), sorted.

    ``root`` may be a single run, a sweep folder, or a folder of sweeps.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(path.parent for path in root.rglob(SUMMARY_FILENAME) if path.is_file())
