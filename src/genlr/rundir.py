"""A run folder: what a run leaves in it, whether an earlier run is there, and the lock a
run holds while it writes. No torch, so that gen-train judges a folder before importing it.

A second run into a folder that holds a run would replace its ``summary.json`` and
``checkpoints/last.pt`` and mix two runs' TensorBoard events (TensorBoard shows every
events file of a folder as one run), so it is refused unless told what to do with it:
``trainer.resume`` continues it, ``trainer.overwrite`` starts over (``clear_run``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

# What the engine writes: any of them in a folder means a run was there (docs/design.md).
ENGINE_OUTPUTS = ("summary.json", "checkpoints", "tb", "plots")
# ... and what gen-train's Hydra job adds: its config and its log (appended to, not replaced)
CLI_OUTPUTS = (".hydra", "train.log")
# What a Hydra sweep writes beside its jobs (the Optuna sweeper's result among them).
SWEEP_OUTPUTS = ("multirun.yaml", "optimization_results.yaml")


class RunDirInUse(ValueError):
    """Another run is writing into the same folder."""


class EarlierRun(ValueError):
    """The folder holds an earlier run, and the new one was not told to resume or replace it."""


def resume_path(resume: str | None, run_dir: Path | None) -> Path | None:
    """``trainer.resume``: None/false -> None; true -> this run's last.pt; auto -> this run's
    last.pt if there is one, else None (a fresh start); else a file or run dir. A run whose
    folder is not known yet (``run_dir`` None: a sweep's job) has no last.pt of its own."""
    if resume is None or str(resume).lower() in ("false", "no", "0", ""):
        return None
    if str(resume).lower() in ("auto", "true", "yes", "1"):
        if run_dir is None:
            return None
        path = Path(run_dir) / "checkpoints" / "last.pt"
        if str(resume).lower() == "auto" and not path.is_file():
            return None
    else:
        path = Path(resume)
        if path.is_dir():
            path = path / "checkpoints" / "last.pt"
    if not path.is_file():
        raise FileNotFoundError(f"trainer.resume: no checkpoint at {path}")
    return path


def resumes_here(resume_from: Path | None, run_dir: Path) -> bool:
    """Whether the checkpoint a run resumes from is the one in its own folder."""
    return (resume_from is not None
            and Path(run_dir).resolve() in Path(resume_from).resolve().parents)


def earlier_run(run_dir: Path) -> str | None:
    """What of an earlier run ``run_dir`` holds, in a few words (``completed at step 200``);
    None where there is none. A folder holding only gen-train's ``.hydra/`` and
    ``train.log`` is not a run: its job stopped before the engine wrote anything."""
    run_dir = Path(run_dir)
    summary = run_dir / "summary.json"
    if summary.is_file():
        try:
            record = json.loads(summary.read_text(encoding="utf-8"))
            return f"{record['status']} at step {record['steps']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "a summary.json"
    found = [name for name in ("checkpoints/last.pt", "tb/", "plots/")
             if (run_dir / name).is_file() or (run_dir / name).is_dir()
             and any((run_dir / name).iterdir())]
    return ", ".join(found) or None


def run_folders(root: Path, depth: int = 1) -> list[Path]:
    """The folders ``depth`` levels below ``root`` that hold a run, in name order (a sweep's
    job folders: ``depth`` is the number of parts of its subfolder's name)."""
    if not Path(root).is_dir():
        return []
    return [p for p in sorted(Path(root).glob("/".join(["*"] * depth)))
            if p.is_dir() and earlier_run(p) is not None]


def check_run_dir(run_dir: Path, continuing: bool, key: str = "") -> None:
    """Raise, in one line, where a run cannot start in ``run_dir``: another run is writing
    there (``RunDirInUse``), or it holds an earlier run (``EarlierRun``) that this one does
    not continue (``continuing``: it resumes that run's checkpoint, or overwrites it).
    Writes nothing; ``key`` names the setting that chose the folder."""
    run_dir = Path(run_dir)
    where = f"{key}={run_dir}" if key else str(run_dir)
    if (run_dir / ".lock").is_file():  # (taking a lock that is not there would create it)
        try:
            with run_dir_lock(run_dir):
                pass
        except RunDirInUse as err:
            raise RunDirInUse(f"{key}={err}" if key else str(err)) from None
    what = None if continuing else earlier_run(run_dir)
    if what is not None:
        resumable = (run_dir / "checkpoints" / "last.pt").is_file()
        raise EarlierRun(f"{where} holds an earlier run ({what}); "
                         + ("continue it with trainer.resume=true, " if resumable else "")
                         + "start over with trainer.overwrite=true (removes its outputs), "
                         "or give this run another folder")


def earlier_sweep(sweep_dir: Path, jobs: list[Path]) -> str:
    """The one line that refuses a sweep into ``sweep_dir``, whose job folders ``jobs``
    hold an earlier sweep's runs."""
    shown = ", ".join(str(job.relative_to(sweep_dir)) for job in jobs[:3])
    return (f"hydra.sweep.dir={sweep_dir} holds {len(jobs)} run(s) of an earlier sweep "
            f"({shown}{', ...' if len(jobs) > 3 else ''}); continue that sweep with "
            "trainer.resume=auto, start over with trainer.overwrite=true (removes their "
            "outputs), or give this sweep another folder")


def check_writable(out_dir: Path, key: str) -> None:
    """The folder can be created: each folder name still to make is one the file system
    takes, and a scratch folder can be made in its nearest existing ancestor (permissions
    alone say nothing for root, nor about /proc). Raises ValueError (one line naming
    ``key``, the setting that chose the folder) where it cannot."""
    existing, missing = out_dir.absolute(), []
    while not os.path.exists(existing):  # False, not an error, for a name too long
        existing, missing = existing.parent, [existing.name, *missing]
    if not existing.is_dir():
        raise ValueError(f"{key}={out_dir}: {existing} is not a directory")
    try:
        longest = os.pathconf(existing, "PC_NAME_MAX")
    except (AttributeError, OSError, ValueError):  # Windows has no pathconf
        longest = 255
    too_long = next((name for name in missing if len(os.fsencode(name)) > longest), None)
    if too_long is not None:
        raise ValueError(f"{key}={out_dir}: the folder name {too_long[:20]}... is "
                         f"{len(os.fsencode(too_long))} bytes long; the file system takes at "
                         f"most {longest}")
    try:
        os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".gen-train-check-"))
    except OSError as err:
        raise ValueError(f"{key}={out_dir}: cannot create folders in {existing} "
                         f"({err.strerror or type(err).__name__})") from None


def clear_run(run_dir: Path, names: tuple[str, ...] = ENGINE_OUTPUTS) -> list[Path]:
    """Remove an earlier run's ``names`` from ``run_dir`` (by default what the engine
    writes; gen-train adds ``CLI_OUTPUTS`` before its job starts) and return what went.
    Any other file stays."""
    removed = []
    for name in names:
        path = Path(run_dir) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(path)
    return removed


@contextlib.contextmanager
def run_dir_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``<run_dir>/.lock`` while a run writes there, so that a second run started in
    the same folder is refused instead of interleaving its outputs with the first's."""
    lock = FileLock(Path(run_dir) / ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RunDirInUse(f"{run_dir}: another run is using this folder (it holds "
                          f"{Path(run_dir) / '.lock'}); give this run its own folder") from None
    try:
        yield
    finally:
        lock.release()
