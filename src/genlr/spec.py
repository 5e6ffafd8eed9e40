"""What one run is: ``RunSpec`` (the components and their options) and ``TrainerConfig``
(how to train). Plain data without torch, so that gen-train checks a command line and
prints ``--help`` before torch is imported; ``genlr.engine`` builds and trains from it."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from genlr.options import NonNegativeInt, PositiveInt, SettingError, check_options, options_of

Device = Literal["auto", "cpu", "cuda"]
AmpMode = Literal["off", "bf16", "fp16"]
DEVICES, AMP_MODES = typing.get_args(Device), typing.get_args(AmpMode)
EVALS_PER_RUN = 10  # evaluations spread over a run when trainer.eval_every is 0


def _setting(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(kw_only=True)
class TrainerConfig:
    """How to train (the ``trainer.*`` overrides; these names are the public interface).
    Its fields are options as a registry entry's are (``genlr.options``: keyword-only, a
    ``Literal``'s choices, a ``Range``), judged by ``check_options``; each field's ``help``
    is what ``gen-train --help`` says about it, after its choices."""

    device: Device = _setting("auto", "(auto: cuda when there is one)")
    strategy: Literal["single", "ddp"] = _setting(
        "single", "(under torchrun; batch_size is the global batch)")
    amp: AmpMode = _setting("off", "(fp16: CUDA only, with a GradScaler)")
    compile: bool = _setting(False, "torch.compile the model")
    epochs: PositiveInt = _setting(1, "passes over the training data (unless max_steps is given)")
    max_steps: Optional[PositiveInt] = _setting(
        None, "the run's length in steps; given, it replaces epochs (the data is passed over as "
              "often as it takes)")
    batch_size: PositiveInt = _setting(128, "training batch size")
    eval_batch_size: PositiveInt = _setting(
        1000, "evaluation batch size (the metrics do not depend on it)")
    eval_every: NonNegativeInt = _setting(
        0, f"steps between evaluations; 0: {EVALS_PER_RUN} spread over the run")
    log_every: PositiveInt = _setting(10, "steps between TensorBoard points")
    checkpoint_every: NonNegativeInt = _setting(
        0, "steps between checkpoints (checkpoints/last.pt); 0: at every evaluation. Also at the "
           "start, the end and on SIGTERM/SIGINT; a diverged run keeps its last good one")
    resume: Optional[str] = _setting(None, "continue a run: true (this run folder's checkpoint), "
                                           "auto (that checkpoint if there is one, else start: a "
                                           "rerun of a sweep goes on where it stopped), or the "
                                           "path of a run folder or a checkpoint")
    resume_with_changes: bool = _setting(False, "resume although the config differs from the "
                                                "checkpoint's (the differences are logged; the "
                                                "saved states are restored as they are)")
    overwrite: bool = _setting(False, "start afresh in a folder that holds an earlier run (else "
                                      "refused): first removes its summary.json, checkpoints/, "
                                      "tb/, plots/ and gen-train's .hydra/ and train.log (in a "
                                      "sweep: every earlier job's, multirun.yaml and "
                                      "optimization_results.yaml); other files stay")
    profile_every: NonNegativeInt = _setting(0, "steps between phi(s) line-profile images; 0: never")
    progress: bool = _setting(True, "a progress bar when the terminal shows one (progress lines "
                                    "go to the log either way)")
    plots: bool = _setting(True, "PNG plots of loss, accuracy and lr into plots/ at the end")

    def __post_init__(self) -> None:
        check_options("trainer", None, options_of(TrainerConfig), vars(self))
        if self.overwrite and str(self.resume).lower() not in ("none", "false", "no", "0", ""):
            raise SettingError(f"trainer.overwrite=true and trainer.resume={self.resume}: the one "
                             "starts over, the other continues; give one of them")

    def eval_interval(self, total_steps: int) -> int:
        """Steps between evaluations (there is always one after the last step too)."""
        return self.eval_every or max(1, -(-total_steps // EVALS_PER_RUN))


@dataclass
class RunSpec:
    """One run: each component is ``{"name": ..., **options}`` as in the config groups."""

    task: dict[str, Any] = field(default_factory=lambda: {"name": "fashion_mnist"})
    model: dict[str, Any] = field(default_factory=lambda: {"name": "cnn"})
    optimizer: dict[str, Any] = field(default_factory=lambda: {"name": "adamw"})
    lr: dict[str, Any] = field(default_factory=lambda: {"name": "constant"})
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    seed: int = 0
