"""The training loop: one run of a task, a model, an optimizer and a learning-rate method.

Reads top to bottom like a hand-written PyTorch loop; everything a run leaves behind
(TensorBoard events, ``summary.json``, plots, ``checkpoints/last.pt``) is described in
docs/design.md. Usable without Hydra::

    from genlr.engine import RunSpec, train
    summary = train(RunSpec(task={"name": "fashion_mnist"}, lr={"name": "gen_parabola"}), "runs/x")
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from genlr import distributed
from genlr.messages import duration, one_line
from genlr.methods import build_lr_method
from genlr.curvature import compile_seconds, compiling_now
from genlr.models import build_model
from genlr.optimizers import build_optimizer
from genlr.options import SettingError, flatten_config
from genlr.peers import optimizer_hooks
from genlr.rundir import (EarlierRun, RunDirInUse, check_run_dir, clear_run, resume_path,
                          resumes_here, run_dir_lock)
from genlr.tasks import build_task
from genlr.spec import AMP_MODES, DEVICES, RunSpec, TrainerConfig
from genlr.tracking import RunStats, build_summary, write_summary

__all__ = ["AMP_MODES", "DEVICES", "EarlierRun", "RunDirInUse", "RunSpec", "TrainerConfig",
           "build_run", "check_start", "train"]
log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 30.0  # at least one progress line this often in the log

class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""

    def __init__(self, loss: float) -> None:
        super().__init__(f"training loss is {loss}")
        self.loss = loss


class CheckpointError(ValueError):
    """A checkpoint this run cannot resume from; the message is one line."""


class ConfigError(ValueError):
    """A component rejected its options; the message names the component."""


@contextlib.contextmanager
def _blame(group: str, name: str):
    """Prefix a builder's ValueError/TypeError with the component it came from, unless it
    names its setting already (a ``SettingError``: ``optimizer.betas=...``, ``task.path=...``)."""
    try:
        yield
    except (ValueError, TypeError) as err:
        if isinstance(err, (ConfigError, SettingError)):
            raise
        raise ConfigError(f"{group}={name}: {err}") from err


def _split(component: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    options = dict(component)
    return options.pop("name"), options


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("trainer.device=cuda but no CUDA device is available (use auto or cpu)")
    return torch.device(name)


def autocast_factory(device: torch.device, amp: str) -> Callable[[], contextlib.AbstractContextManager]:
    if amp == "off":
        return contextlib.nullcontext
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("trainer.amp=fp16 needs a CUDA device; use trainer.amp=bf16 on CPU")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


def peak_memory_mb(device: torch.device) -> float | None:
    """CUDA: this run's peak allocation. CPU: the process's peak resident size (which, in a
    sweep run in one process, includes earlier jobs); None where the platform does not
    say (Windows has no ``resource`` module)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes there, KiB elsewhere


class Interrupted(BaseException):
    """A stop signal acted on at once, inside a step (``consistent=False``: a compile of
    the curvature pass, which can take minutes) or an evaluation (``True``: after a
    finished step), not at the end of the step. A BaseException, so that no method's
    ``except Exception`` takes it for a failure of its own."""

    def __init__(self, signum: int, consistent: bool) -> None:
        super().__init__(signum)
        self.signum, self.consistent = signum, consistent


class StopRequest:
    """Turns SIGTERM/SIGINT into a flag the loop checks at the end of each step, so a
    killed run still saves; inside a compile, which can take minutes, it stops at once
    (``Interrupted``)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay with the caller
                pass
        return self

    def _handle(self, signum, frame) -> None:
        self.signal = signum
        if compiling_now():
            raise Interrupted(signum, consistent=False)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@torch.no_grad()
def evaluate(task, model, autocast, batch_size: int,
             after_batch: Callable[[int], None] | None = None) -> dict[str, float]:
    """Exact averages over the evaluation set (sums first, then one division);
    ``after_batch(i)`` is called after the i-th batch (1, 2, ...)."""
    was_training = model.training
    model.eval()
    totals: dict[str, float] = {}
    for i, batch in enumerate(task.eval_batches(batch_size), 1):
        with autocast():
            sums = task.evaluate(model, batch)
        for key, value in sums.items():
            totals[key] = totals.get(key, 0.0) + float(value)
        if after_batch is not None:
            after_batch(i)
    model.train(was_training)
    count = max(totals.pop("count", 0.0), 1.0)
    metrics = {"loss": totals.pop("loss_sum", math.nan) / count}
    if "correct" in totals:
        metrics["acc"] = totals.pop("correct") / count
    metrics.update({key.removesuffix("_sum"): value / count for key, value in totals.items()})
    return metrics


class SilentWriter:
    """The writer of ranks other than 0: they train, rank 0 writes."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


@dataclass
class Run:
    """Everything one run trains with, built from a RunSpec by ``build_run``."""

    spec: RunSpec
    device: torch.device
    task: Any
    model: torch.nn.Module
    forward_model: Callable  # the model, compiled if trainer.compile (what probes call)
    train_model: Callable  # what the training forward calls: forward_model, under DDP if distributed
    optimizer: torch.optim.Optimizer
    method: Any
    hooks: Any
    scaler: torch.amp.GradScaler
    autocast: Callable[[], contextlib.AbstractContextManager]
    total_steps: int


def build_run(spec: RunSpec, device: torch.device, load_data: bool = True) -> Run:
    """Build task, model, optimizer and LR method; every bad name or option raises its
    one-line error here. ``load_data=False`` checks a spec without touching data."""
    cfg = spec.trainer
    autocast = autocast_factory(device, cfg.amp)
    names = {}
    options = {}
    for group in ("task", "model", "optimizer", "lr"):
        names[group], options[group] = _split(getattr(spec, group))
    with _blame("task", names["task"]):
        task = build_task(names["task"], **options["task"])
    task.check_batch_size(cfg.batch_size)  # before loading, where the task can tell its size
    if load_data:
        task.setup(device)
    # trainer.max_steps, given, is the run's length (epochs follow one another as long as it
    # takes, as in Lightning); else trainer.epochs passes over the data.
    if cfg.max_steps is not None:
        total_steps = cfg.max_steps
    else:
        total_steps = task.steps_per_epoch(cfg.batch_size) * cfg.epochs if load_data else 1
    with _blame("model", names["model"]):
        model = build_model(names["model"], task, **options["model"]).to(device)
    with _blame("optimizer", names["optimizer"]):
        optimizer = build_optimizer(names["optimizer"], model.parameters(), **options["optimizer"])
    forward_model = torch.compile(model) if cfg.compile else model

    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    with _blame("lr", names["lr"]):
        # Probes go through the compiled module; the curvature takes its original module.
        method = build_lr_method(names["lr"], optimizer, forward_model, task.loss,
                                 total_steps=total_steps, scaler=scaler, autocast=autocast,
                                 profile_every=cfg.profile_every, **options["lr"])
    with _blame("optimizer", names["optimizer"]):
        hooks = optimizer_hooks(optimizer, model, task)
        if hooks.sets_lr and names["lr"] != "constant":
            raise ValueError(f"it sets its own learning rate: use lr=constant, not lr={names['lr']}")
        if hooks.single_process and cfg.strategy == "ddp":
            raise ValueError("it runs in one process: trainer.strategy=ddp is not for it")
    train_model = forward_model
    if distributed.is_distributed():
        train_model = torch.nn.parallel.DistributedDataParallel(
            forward_model, device_ids=[device.index] if device.type == "cuda" else None)
    return Run(spec, device, task, model, forward_model, train_model, optimizer, method, hooks,
               scaler, autocast, total_steps)


def check_start(spec: RunSpec, run_dir: str | Path | None = None, folder_key: str = "") -> Run:
    """Refuse, in one line, what ``train`` would refuse before its first step, loading no
    data and writing nothing: the strategy and the device exist, ``run_dir`` takes the run
    (None: not known yet), every component builds (on the CPU), the checkpoint it resumes
    from fits them, the data is there (a task that downloads does so now) and holds a batch.
    gen-train calls it for every job of a command line before Hydra starts one;
    ``folder_key`` names the setting that chose ``run_dir`` (``hydra.run.dir``). Returns the
    run it built, without data."""
    cfg = spec.trainer
    resolve_device(cfg.device)
    run, resume_from = _start(spec, run_dir, torch.device("cpu"), load_data=False,
                              folder_key=folder_key)
    distributed.check(cfg.strategy, cfg.batch_size)  # (after a component's own refusal)
    if resume_from is not None:
        load_checkpoint(resume_from, run, RunStats(), WallClock())
    run.task.prepare_data()
    run.task.check_batch_size(cfg.batch_size)  # (the data is there now)
    return run


def _start(spec: RunSpec, run_dir: str | Path | None, device: torch.device,
           load_data: bool = True, folder_key: str = "") -> tuple[Run, Path | None]:
    """The start every run makes (``train``) or is checked for (``check_start``): the folder
    first, before any data loads, since nothing may go into a folder that holds an earlier
    run this one neither continues nor was told to overwrite; then the components. Returns
    the run and the checkpoint it resumes from (``trainer.resume``)."""
    cfg = spec.trainer
    resume_from = resume_path(cfg.resume, run_dir)
    if run_dir is not None and distributed.is_main() and Path(run_dir).is_dir():
        check_run_dir(Path(run_dir), cfg.overwrite or resumes_here(resume_from, run_dir),
                      folder_key)
    return build_run(spec, device, load_data), resume_from


class GlobalRNG:
    """The global torch (and CUDA) random state, saved and restored like a module's."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def state_dict(self) -> dict[str, Any]:
        return {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if self.cuda else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"].cpu())
        if state["cuda"] is not None and self.cuda:
            torch.cuda.set_rng_state_all(state["cuda"])


class WallClock:
    """Seconds since the run started, summed over its attempts: a resumed run goes on from
    its checkpoint's time (the time between attempts does not count)."""

    def __init__(self) -> None:
        self.started, self.before = time.perf_counter(), 0.0

    def seconds(self) -> float:
        return self.before + time.perf_counter() - self.started

    def state_dict(self) -> dict[str, float]:
        return {"wall_time_s": self.seconds()}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.before = state["wall_time_s"]


def _checkpointed(run: Run, stats: RunStats, clock: WallClock) -> dict[str, Any]:
    """What a checkpoint holds besides the step and the config, by key: each has
    ``state_dict()`` and ``load_state_dict()``. The one list of what
    ``checkpoints/last.pt`` contains."""
    return {"model": run.model, "optimizer": run.optimizer, "lr_method": run.method,
            "scaler": run.scaler, "hooks": run.hooks, "stats": stats,
            "rng": GlobalRNG(run.device), "clock": clock}


def save_checkpoint(path: Path, run: Run, stats: RunStats, clock: WallClock, step: int) -> None:
    """Write the run's state after ``step`` steps, and its config, to ``path``, atomically:
    a kill mid-save never leaves a broken checkpoint. The model is saved as it is
    evaluated (the peers' hooks in eval mode)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    run.hooks.eval()
    try:  # state dicts share the parameters' storage: save before hooks.train() moves them
        parts = _checkpointed(run, stats, clock)
        torch.save({**{key: part.state_dict() for key, part in parts.items()},
                    "step": step, "config": asdict(run.spec)}, tmp)
    finally:
        run.hooks.train()
    tmp.replace(path)


# trainer settings that say how long a run goes on and how it is watched, not where it
# goes: a resumed run may change them freely
FREE_ON_RESUME = {f"trainer.{key}" for key in (
    "resume", "resume_with_changes", "overwrite", "epochs", "max_steps", "eval_every",
    "eval_batch_size", "log_every", "checkpoint_every", "profile_every", "progress", "plots",
    "device")}


def config_changes(saved: dict[str, Any], spec: RunSpec) -> list[str]:
    """``key saved -> now`` for each setting that differs from the checkpoint's; another
    component (``lr=cosine -> lr=newt``) is one change, not one per option."""
    old, new = flatten_config(saved), flatten_config(asdict(spec))
    keys = sorted(old.keys() | new.keys())
    swapped = [key.removesuffix(".name") for key in keys
               if key.endswith(".name") and old.get(key) != new.get(key)]
    return ([f"{group}={old.get(f'{group}.name')} -> {group}={new.get(f'{group}.name')}"
             for group in swapped]
            + [f"{key} {old.get(key)} -> {new.get(key)}" for key in keys
               if key.split(".")[0] not in swapped and key not in FREE_ON_RESUME
               and old.get(key) != new.get(key)])


def _unreadable(err: BaseException) -> str:
    """Why torch.load(weights_only=True) refused a file, in a few words."""
    text = str(err)
    if "WeightsUnpickler error:" in text:
        detail = [line for line in text.split("WeightsUnpickler error:", 1)[1].splitlines()
                  if line.strip()]
        reason = detail[0].strip().split(" was not an allowed global")[0] if detail else ""
        return f"torch.load(weights_only=True) refuses it: {reason}"
    return one_line(err, with_type=True).split(". ")[0]  # torch's first sentence says it


def load_checkpoint(path: Path, run: Run, stats: RunStats, clock: WallClock) -> tuple[int, list[str]]:
    """Restore what ``save_checkpoint`` wrote into ``run``, ``stats`` and ``clock``; return
    the step and the config changes since (see ``config_changes``), which need
    ``trainer.resume_with_changes``. Raises ``CheckpointError`` (one line) for a file
    that is no checkpoint of a run like this one.

    Read with ``weights_only=True``: tensors and plain containers only, never code, so a
    checkpoint from someone else cannot run anything (torch's own default since 2.6).
    Everything gen-train saves is of those types."""
    try:
        state = torch.load(path, map_location=run.device, weights_only=True)
    except Exception as err:  # torch's many reasons: not a zip, truncated, unpickling refused
        raise CheckpointError(f"trainer.resume: {path} is not a readable checkpoint "
                              f"({_unreadable(err)}); resume from another checkpoint, or start "
                              "the run over: trainer.overwrite=true instead of trainer.resume") from err
    parts = _checkpointed(run, stats, clock)
    missing = ([key for key in (*parts, "step", "config") if key not in state]
               if isinstance(state, dict) else ["step"])
    if missing:
        raise CheckpointError(f"trainer.resume: {path} is not a gen-train checkpoint "
                              f"(it has no {missing[0]!r})")
    changes = config_changes(state["config"], run.spec)
    if changes and not run.spec.trainer.resume_with_changes:
        raise CheckpointError(f"trainer.resume: {path} was trained with another config "
                              f"({'; '.join(changes)}); set trainer.resume_with_changes=true "
                              "to resume it anyway")
    for key, part in parts.items():
        try:
            part.load_state_dict(state[key])
        except Exception as err:
            raise CheckpointError(f"trainer.resume: the {key} state in {path} does not fit this "
                                  f"run ({one_line(err, with_type=True)})") from err
    return state["step"], changes


def _batch_stream(task, batch_size: int, seed: int, steps_per_epoch: int, step: int) -> Iterator[Any]:
    """The training batches from global step ``step`` on, epoch after epoch, in the order
    an uninterrupted run sees them (so a resumed run continues it exactly)."""
    epoch, start = divmod(step, steps_per_epoch)
    while True:
        empty = True
        for batch in task.train_batches(batch_size, epoch, seed, start=start):
            empty = False
            yield batch
        if empty:
            return
        epoch, start = epoch + 1, 0


def training_steps(run: Run, start: int = 0) -> Iterator[tuple[float, float]]:
    """Train from step ``start`` until ``run.total_steps`` (or the data ends), yielding
    ``(loss, step_ms)`` after each step: its training loss (the mean over ranks) and time.

    One batch ahead, so that a method probing "the next batch" (GeN's ``probe="next"``)
    gets one its optimizer has not stepped on yet; it is trained on next step. Raises
    ``Diverged`` on a non-finite loss, before the method steps on it.
    """
    batch_size = run.spec.trainer.batch_size
    batches = _batch_stream(run.task, batch_size, run.spec.seed,
                            run.task.steps_per_epoch(batch_size), start)
    upcoming = next(batches, None)
    for _ in range(start, run.total_steps):
        if upcoming is None:
            return
        batch, upcoming = upcoming, next(batches, None)
        tic = time.perf_counter()
        batch = distributed.shard(batch)
        run.optimizer.zero_grad(set_to_none=True)
        with run.autocast():
            loss = run.task.loss(run.train_model, batch)
        run.scaler.scale(loss).backward()
        (loss_value,) = distributed.mean_over_ranks(loss.detach())
        if not math.isfinite(loss_value):
            raise Diverged(loss_value)
        wants_probe = run.method.wants_probe_batch or run.hooks.wants_probe_batch
        probe_batch = distributed.shard(upcoming) if wants_probe and upcoming is not None else None
        run.hooks.before_step(probe_batch)
        run.method.step(batch, loss=loss, probe_batch=probe_batch)
        run.hooks.after_step()
        if run.device.type == "cuda":
            torch.cuda.synchronize(run.device)
        yield loss_value, (time.perf_counter() - tic) * 1e3


def train(spec: RunSpec, run_dir: str | Path, hparams: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train one run into ``run_dir`` and return its summary (also in ``summary.json``).
    ``hparams``: the (nested) config to record for TensorBoard's HParams tab; by default
    the spec's.

    Raises the component's own one-line errors (unknown names, bad options, missing
    dataset, incompatible optimizer, a checkpoint that does not fit, a folder another
    run holds, a folder holding an earlier run this one neither resumes nor overwrites:
    ``EarlierRun``) before anything is written; once training started, a NaN loss or a stop
    signal ends the run with status ``diverged`` / ``interrupted``, and any other failure
    with status ``failed``, always leaving summary, plots and the last good checkpoint
    behind. Progress goes to the ``genlr.engine`` logger: a line at every evaluation and
    at least every ``PROGRESS_EVERY_S`` seconds, and the run's last line.
    """
    from genlr.tracking import RunWriter, write_plots  # TensorBoard and matplotlib: only to train

    cfg, run_dir = spec.trainer, Path(run_dir)
    clock = WallClock()
    device = distributed.init(cfg.strategy, cfg.device, cfg.batch_size) or resolve_device(cfg.device)
    main_rank = distributed.is_main()  # only rank 0 writes the run's outputs (and says so)
    torch.manual_seed(spec.seed)
    run, resume_from = _start(spec, run_dir, device)
    task, model, method, hooks = run.task, run.model, run.method, run.hooks
    steps_per_epoch = task.steps_per_epoch(cfg.batch_size)
    eval_every = cfg.eval_interval(run.total_steps)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # per run, also within a sweep

    run_dir.mkdir(parents=True, exist_ok=True)
    with run_dir_lock(run_dir) if main_rank else contextlib.nullcontext():
        if cfg.overwrite and main_rank:
            clear_run(run_dir)
        checkpoint_path = run_dir / "checkpoints" / "last.pt"
        stats, step = RunStats(), 0
        status, message = "completed", ""
        if resume_from is not None:
            step, changes = load_checkpoint(resume_from, run, stats, clock)
            if changes and main_rank:
                log.warning("resuming with a changed config (trainer.resume_with_changes): %s",
                            "; ".join(changes))
            if main_rank:
                log.info("resumed from step %d/%d (%s)%s", step, run.total_steps, resume_from,
                         "" if step < run.total_steps else ": nothing left to train")
        writer: Any = SilentWriter()  # until the first checkpoint (below) is there
        # when each was last done; how long the last evaluation took (seconds)
        marks = {"checkpoint": None, "eval": None, "line": time.perf_counter(), "eval_s": 0.0}

        def checkpoint() -> None:
            if main_rank:
                save_checkpoint(checkpoint_path, run, stats, clock, step)
            marks["checkpoint"] = step

        def late(ahead_s: float = 0.0) -> bool:
            """Whether a line is due now, so that none is more than PROGRESS_EVERY_S apart
            when what comes next takes ``ahead_s``."""
            return time.perf_counter() - marks["line"] + ahead_s > PROGRESS_EVERY_S

        def evaluating(batches: int, stoppable: bool) -> None:
            if stoppable and stop is not None and stop.signal is not None:
                raise Interrupted(stop.signal, consistent=True)  # a long evaluation stops at once
            if late():  # a long evaluation: say where it is
                if main_rank:
                    log.info("step %d/%d: evaluating (batch %d done)", step, run.total_steps,
                             batches)
                marks["line"] = time.perf_counter()

        def run_eval(loss_value: float | None) -> dict[str, float]:
            if late(marks["eval_s"]):  # the evaluation would make the next line late
                log_progress(loss_value)
            started = time.perf_counter()
            # the evaluation a stop asks for (below) runs to its end
            stoppable = stop is None or stop.signal is None
            hooks.eval()
            with hooks.eval_model() as eval_model:
                metrics = evaluate(task, eval_model, run.autocast, cfg.eval_batch_size,
                                   after_batch=lambda i: evaluating(i, stoppable))
            hooks.train()
            marks["eval_s"] = time.perf_counter() - started
            stats.record_eval(step, eval_loss=metrics["loss"], eval_acc=metrics.get("acc"))
            writer.scalars(step, {f"eval/{k}": v for k, v in metrics.items()})
            marks["eval"] = step
            log_progress(loss_value, metrics)
            return metrics

        def log_progress(loss_value: float | None, metrics: dict[str, float] | None = None) -> None:
            # one-off compile time left out: it would make the time left minutes too long
            busy = time.perf_counter() - loop_started - (compile_seconds() - compiled_before)
            rate = (step - first_step) / max(busy, 1e-9)
            values = [("train loss", loss_value), *((f"eval {k}", v) for k, v in (metrics or {}).items())]
            line = ", ".join(f"{name} {value:.4g}" for name, value in values if value is not None)
            remaining = (run.total_steps - step) / rate if rate > 0 else 0.0
            left = f", {duration(remaining)} left" if remaining >= 1 else ""
            if main_rank:  # every rank trains the same steps: one says so
                log.info("step %d/%d: %s, lr %.3g (%.3g steps/s%s)", step, run.total_steps, line,
                         hooks.lrs()[0], rate, left)
            marks["line"] = time.perf_counter()

        def log_step(at: int, loss_value: float, lrs: list[float], step_ms: float | None) -> None:
            writer.scalars(at, {
                "train/loss": loss_value, "train/lr": lrs[0], "time/step_ms": step_ms,
                **{f"lr/group{i}": v for i, v in enumerate(lrs)},
                **{f"method/{k}": v for k, v in method.diagnostics.items()},
            })

        progress = tqdm(total=run.total_steps, initial=step, desc=spec.lr["name"], leave=False,
                        disable=None if cfg.progress and main_rank else True)
        model.train()
        hooks.train()
        if step == 0:
            stats.record_step(0, lr=hooks.lrs())  # the initial learning rate, before any step
            checkpoint()  # a good state to go back to, even if the very first steps diverge
        # After that checkpoint, so that a folder with events always has one to resume from.
        # Resuming purges the events an interrupted attempt logged after its checkpoint.
        if main_rank:
            writer = RunWriter(run_dir, purge_step=step + 1 if resume_from else None)
            if resume_from is None:
                writer.hparams(hparams or asdict(spec))
        first_step, loop_started = step, time.perf_counter()
        compiled_before = compile_seconds()
        stop = None
        try:
            with StopRequest() as stop, (contextlib.nullcontext() if progress.disable
                                         else logging_redirect_tqdm()):
                for loss_value, step_ms in training_steps(run, step):
                    step += 1
                    lrs = hooks.lrs()
                    stats.record_step(step, train_loss=loss_value, lr=lrs, step_ms=step_ms,
                                      method_lr=method.diagnostics.get("gen_lr"))
                    progress.update()
                    if (profile := method.take_profile()) is not None:
                        writer.line_profile(step, profile)
                    if step % cfg.log_every == 0 or step == run.total_steps:
                        log_step(step, loss_value, lrs, step_ms)
                        progress.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lrs[0]:.3g}")
                    evaluated = step % eval_every == 0 or step == run.total_steps
                    if evaluated:
                        method.on_eval(run_eval(loss_value))
                    elif late(step_ms / 1e3):  # (the next step will take about as long)
                        log_progress(loss_value)
                    if (step % cfg.checkpoint_every == 0 if cfg.checkpoint_every else evaluated):
                        checkpoint()
                    if distributed.any_rank(stop.signal is not None):
                        stop.signal = stop.signal or signal.SIGTERM  # another rank was stopped
                        break
                if stop.signal is not None:
                    status = "interrupted"
                    message = f"stopped by {signal.Signals(stop.signal).name} at step {step}"
                    if marks["eval"] != step:  # for the summary; the method does not see it,
                        run_eval(stats.final()["train_loss"])  # so a resumed run goes on unchanged
                if marks["checkpoint"] != step:
                    checkpoint()
        except Diverged as err:
            # The last good checkpoint stays; the bad step is recorded and logged.
            status, message = "diverged", f"{err} at step {step + 1}"
            stats.record_step(step + 1, train_loss=err.loss, lr=hooks.lrs())
            log_step(step + 1, err.loss, hooks.lrs(), None)
        except Interrupted as err:
            status = "interrupted"
            if err.consistent:  # in an evaluation after a finished step
                message = f"stopped by {signal.Signals(err.signum).name} at step {step}"
                checkpoint()
            else:  # inside a step: the last good checkpoint stays
                message = (f"stopped by {signal.Signals(err.signum).name} in step {step + 1}, "
                           f"compiling; resumes from step {marks['checkpoint']}")
        except KeyboardInterrupt:  # a second Ctrl-C, or one outside the signal handler
            status, message = "interrupted", f"interrupted at step {step}"
            checkpoint()
        except Exception as err:
            status, message = "failed", one_line(err, with_type=True)
            raise
        finally:
            progress.close()
            summary = build_summary(
                stats, components={"task": spec.task["name"], "model": spec.model["name"],
                                   "optimizer": spec.optimizer["name"], "lr_method": spec.lr["name"]},
                seed=spec.seed, status=status, message=message, steps=step,
                epochs=step / steps_per_epoch, wall_time_s=clock.seconds(),
                peak_memory_mb=peak_memory_mb(device), method_passes=method.passes,
                device=str(device), amp=cfg.amp, torch_version=torch.__version__,
                world_size=distributed.world_size(), trainer=asdict(cfg),
                checkpoint_step=marks["checkpoint"], method_fields=method.summary_fields())
            writer.end_session(status)
            writer.close()
            if main_rank:
                write_summary(run_dir, summary)
                if cfg.plots:
                    write_plots(run_dir, stats.history())
    if main_rank:
        account = method.account_line()
        if account:
            log.info("%s", account)
        log.log(logging.INFO if status == "completed" else logging.ERROR, "%s",
                last_line(summary, run_dir))
    return summary


def last_line(summary: dict[str, Any], run_dir: Path) -> str:
    """``completed 469 steps in 2m20s: train loss 0.3, eval loss 0.3412, eval acc 0.8765 -> DIR``."""
    line = f"{summary['status']} {summary['steps']} steps in {duration(summary['wall_time_s'])}"
    if summary["status"] != "completed" and summary["message"]:
        line += f" ({summary['message']})"
    metrics = ", ".join(f"{key.replace('_', ' ')} {value:.4g}"
                        for key, value in summary["final"].items()
                        if value is not None and math.isfinite(value))
    return f"{line}{': ' + metrics if metrics else ''} -> {run_dir}"
