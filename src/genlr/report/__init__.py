"""Reports over runs and sweeps: group runs by everything but the seed, summarise them
(mean ± std over seeds, statuses counted, time to a target, cost against the base
optimizer) into ``report.md`` and ``report.csv``, and draw the figures. Usable without
Hydra; ``gen-report DIR`` is the command line::

    from genlr.report import write_report
    report = write_report("outputs/multirun/2025-01-01/12-00-00")
    print(report.out / "report.md")
"""

from .build import REPORT_DIRNAME, Report, write_report
from .groups import Group, Stat, Target, best_per_method, make_groups, summarise
from .runs import NoRunsError, RunRecord, load_runs
from .trajectories import synthetic_figures, trace, trajectory_figure

__all__ = [
    "REPORT_DIRNAME", "Report", "write_report", "Group", "Stat", "Target", "best_per_method",
    "make_groups", "summarise", "NoRunsError", "RunRecord", "load_runs", "synthetic_figures",
    "trace", "trajectory_figure",
]
