"""``RunWriter``: everything a run logs to TensorBoard, into ``<run_dir>/tb/``.

One run directory is one TensorBoard run, HParams included: point TensorBoard at a sweep
folder and every job is one row of the HParams table, with its own scalar curves.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
from tensorboard.plugins.hparams import metadata as hp_metadata
from torch.utils.tensorboard import SummaryWriter

from genlr.line_profile import LineProfile
from genlr.options import flatten_config

from .summary import STATUSES

TB_DIRNAME = "tb"

# Metric columns to declare for a single run's HParams table (``RunWriter.hparams``):
# scalar tags the run logs.
DEFAULT_HPARAM_METRICS = ("eval/acc", "eval/loss", "train/loss")

# The colour of the chosen step's line in the line-profile image.
CHOSEN_COLOR = "tab:red"

# summary.json's final statuses as TensorBoard HParams session statuses.
_SESSION_STATUS = {
    "completed": api_pb2.STATUS_SUCCESS,
    "diverged": api_pb2.STATUS_FAILURE,
    "failed": api_pb2.STATUS_FAILURE,
}


def _hparam_type(value: bool | int | float | str) -> int:
    if isinstance(value, bool):
        return api_pb2.DATA_TYPE_BOOL
    if isinstance(value, (int, float)):
        return api_pb2.DATA_TYPE_FLOAT64
    return api_pb2.DATA_TYPE_STRING


def flatten_hparams(config: Mapping[str, Any]) -> dict[str, bool | int | float | str]:
    """A nested config as dotted keys (``flatten_config``) with values TensorBoard accepts:
    bool/int/float/str are kept, None becomes ``"None"``, anything else (lists, tuples,
    objects) its ``str``, so one odd config entry never stops the run from logging."""
    return {key: value if isinstance(value, (bool, int, float, str)) else str(value)
            for key, value in flatten_config(config).items()}


def render_figure(figure: Figure) -> np.ndarray:
    """Rasterise a matplotlib figure to an RGB ``uint8`` array (height, width, 3).

    Uses the Agg canvas directly, never pyplot, so it works headless and leaves pyplot's
    global figure registry alone.
    """
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def line_profile_figure(profile: LineProfile) -> Figure:
    """Figure of the real loss phi(s) along the update direction against the LR method's
    quadratic model of it, with the chosen step marked (a vertical line) when there is one."""
    figure = Figure(figsize=(4.0, 3.0), dpi=100)
    ax = figure.add_subplot()
    if profile.s:
        ax.plot(profile.s, profile.loss, "o-", label="loss φ(s)", markersize=3)
        ax.plot(profile.s, profile.model, "--", label="quadratic model")
    if math.isfinite(profile.chosen):
        ax.axvline(profile.chosen, color=CHOSEN_COLOR, linewidth=1.5, label="chosen s")
    ax.set_xlabel("s (multiple of the optimizer step)")
    ax.set_ylabel("loss")
    ax.set_title(f"line profile, step {profile.step}", fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    figure.tight_layout()
    return figure


class RunWriter:
    """Writes one run's TensorBoard events into ``<run_dir>/tb/``.

    Scalar tags follow the run contract (docs/design.md): ``train/loss``, ``train/lr``,
    ``lr/group{i}``, ``eval/loss``, ``eval/acc``, ``time/step_ms``, ``method/<key>``.
    Use as a context manager, or call ``close()``; call ``end_session(status)`` before,
    so the HParams tab shows how the run ended.
    """

    def __init__(
        self, run_dir: str | os.PathLike, *, purge_step: int | None = None, flush_secs: int = 30
    ) -> None:
        """``purge_step``: when resuming from a checkpoint taken after ``purge_step``
        steps, pass it so that TensorBoard (and ``read_scalars``) hide what the
        interrupted attempt logged from that step on, instead of showing both."""
        self.log_dir = Path(run_dir) / TB_DIRNAME
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._writer = SummaryWriter(
            log_dir=str(self.log_dir), purge_step=purge_step, flush_secs=flush_secs
        )

    def scalars(self, step: int, values: Mapping[str, float | None]) -> None:
        """Log ``{tag: value}`` at ``step``. None values are skipped; NaN/inf are logged
        as they are, since a diverging loss is worth seeing."""
        for tag, value in values.items():
            if value is not None:
                self._writer.add_scalar(tag, float(value), global_step=step)

    def hparams(
        self,
        hparams: Mapping[str, Any],
        metrics: Mapping[str, Any] | Iterable[str] | None = None,
    ) -> None:
        """Record this run's hyperparameters for TensorBoard's HParams tab. Call once, at
        the start; the metric values come from the scalars the run logs afterwards.

        ``hparams`` may be nested (a composed Hydra config as a dict); it is flattened
        to dotted keys (``flatten_hparams``).

        The summaries go through this run's own event file (``SummaryWriter.add_hparams``
        would open a timestamped sub-folder), so a sweep job is exactly one TensorBoard
        run; the session start time is recorded and ``end_session`` adds the status.
        By default no experiment summary is written: TensorBoard then builds the
        HParams table from every run's hyperparameters (the union over the sweep, with
        "differs" marked) and offers every scalar tag as a metric column. ``metrics``
        (scalar tags; a dict's values are ignored, since TensorBoard reads each
        metric's value from the last point of the scalar with that tag) declares the
        metric columns instead, e.g. ``DEFAULT_HPARAM_METRICS``. Only for single runs:
        TensorBoard uses one run's declaration for the whole folder, so in a sweep the
        hyperparameters other jobs have but this one lacks would vanish from the table.
        """
        flat = flatten_hparams(hparams)
        start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
        for name, value in flat.items():
            # bool before int: isinstance(True, int) holds. torch's summary.hparams gets
            # this wrong (bools show as 0/1), one reason the protos are built here.
            if isinstance(value, bool):
                start.hparams[name].bool_value = value
            elif isinstance(value, (int, float)):
                start.hparams[name].number_value = value
            else:
                start.hparams[name].string_value = value
        self._add_hparams_data(hp_metadata.SESSION_START_INFO_TAG, session_start_info=start)
        if metrics is not None:
            tags = metrics.keys() if isinstance(metrics, Mapping) else metrics
            experiment = api_pb2.Experiment(
                hparam_infos=[
                    api_pb2.HParamInfo(name=name, type=_hparam_type(value))
                    for name, value in flat.items()
                ],
                metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag)) for tag in tags],
            )
            self._add_hparams_data(hp_metadata.EXPERIMENT_TAG, experiment=experiment)

    def end_session(self, status: str) -> None:
        """Record how the run ended (``completed | diverged | interrupted | failed``) as
        its HParams session status. TensorBoard keeps the first status a run records,
        so ``interrupted`` records nothing: a resumed attempt can still say how it ended.
        """
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        if status == "interrupted":
            return
        end = plugin_data_pb2.SessionEndInfo(
            status=_SESSION_STATUS[status], end_time_secs=time.time()
        )
        self._add_hparams_data(hp_metadata.SESSION_END_INFO_TAG, session_end_info=end)

    def _add_hparams_data(self, tag: str, **plugin_data: Any) -> None:
        content = plugin_data_pb2.HParamsPluginData(**plugin_data)
        summary = Summary(
            value=[
                Summary.Value(
                    tag=tag,
                    metadata=hp_metadata.create_summary_metadata(content),
                    tensor=hp_metadata.NULL_TENSOR,
                )
            ]
        )
        self._writer.file_writer.add_summary(summary)

    def line_profile(self, step: int, profile: LineProfile) -> None:
        """Log the loss along the update direction against the method's quadratic model
        as an image under ``method/line_profile`` (``line_profile_figure``)."""
        image = render_figure(line_profile_figure(profile))
        self._writer.add_image("method/line_profile", image, global_step=step, dataformats="HWC")

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
