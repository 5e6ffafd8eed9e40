"""What gen-train returns to a sweeper: the run's final value of the metric named by the
top-level ``objective`` (Hydra's Optuna sweeper optimises the task function's return value).

``objective`` is ``eval_acc``, ``eval_loss`` or ``train_loss``; unset, it is the task's own
metric: ``eval_acc`` where the task reports accuracy, else ``eval_loss``. Accuracy is
maximised, losses minimised; ``${objective_direction:${objective},${task.name}}`` gives the
sweeper that direction (conf/experiment/tune_lr.yaml). A run that did not complete
(diverged, interrupted, failed) scores the worst value, accuracy 0 or an infinite loss, so
that a search learns to avoid its learning rate and never picks it.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from omegaconf import OmegaConf

from genlr.options import refusal

OBJECTIVES = {"eval_acc": "maximize", "eval_loss": "minimize", "train_loss": "minimize"}
WORST = {"maximize": 0.0, "minimize": math.inf}


def _reports_accuracy(task: str) -> bool:
    from genlr.tasks import TASKS

    return task in TASKS and TASKS[task].classification


def objective_of(objective: str | None, task: str) -> str:
    """The metric a sweep over this config optimises; ValueError (one line) if the task
    cannot report it."""
    if objective is None:
        return "eval_acc" if _reports_accuracy(task) else "eval_loss"
    if objective not in OBJECTIVES:
        raise ValueError(refusal("objective", OBJECTIVES, objective))
    if objective == "eval_acc" and not _reports_accuracy(task):
        raise ValueError(f"objective=eval_acc but task {task} reports no accuracy; "
                         f"use objective=eval_loss or train_loss")
    return objective


def direction(objective: str | None, task: str) -> str:
    """``maximize`` or ``minimize``, as Optuna spells it."""
    return OBJECTIVES[objective_of(objective, task)]


def objective_value(objective: str | None, task: str, summary: Mapping[str, Any]) -> float:
    """The completed run's final value of the objective; the worst value for any other
    status (or a metric the run never measured)."""
    metric = objective_of(objective, task)
    value = summary["final"].get(metric)
    if summary["status"] != "completed" or value is None or not math.isfinite(value):
        return WORST[OBJECTIVES[metric]]
    return value


def register_resolver() -> None:
    OmegaConf.register_new_resolver(
        "objective_direction", lambda objective, task: direction(objective or None, task),
        replace=True)
