"""What a run leaves behind and how it is read back: TensorBoard events (``RunWriter``),
``summary.json`` (``build_summary``, ``write_summary``, ``RunStats``), PNG plots
(``write_plots``), and ``read_scalars`` / ``find_runs`` for reports. See docs/design.md,
"What a run leaves behind"."""

from .events import read_history, read_scalars, find_runs
from .plots import History, write_plots
from .summary import (
    REQUIRED_KEYS,
    REQUIRED_SUBKEYS,
    STATUSES,
    RunStats,
    build_summary,
    missing_keys,
    read_summary,
    write_summary,
)
from .tensorboard import DEFAULT_HPARAM_METRICS, RunWriter, flatten_hparams

__all__ = [
    "DEFAULT_HPARAM_METRICS",
    "History",
    "REQUIRED_KEYS",
    "REQUIRED_SUBKEYS",
    "STATUSES",
    "RunStats",
    "RunWriter",
    "build_summary",
    "find_runs",
    "flatten_hparams",
    "missing_keys",
    "read_history",
    "read_scalars",
    "read_summary",
    "write_plots",
    "write_summary",
]
