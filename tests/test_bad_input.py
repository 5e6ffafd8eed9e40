"""Malformed command lines: each either runs or exits non-zero with one line, never a
traceback (property-based, through the real gen-train entry point in-process). The bad
command lines known by name are the table of test_rejections.py."""

from __future__ import annotations

import contextlib
import io
import string
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gen_cli.train import main

KEYS = ["task", "model", "optimizer", "lr", "trainer", "seed", "experiment",
        "trainer.batch_size", "trainer.epochs", "trainer.max_steps", "trainer.amp",
        "trainer.device", "trainer.eval_every", "trainer.log_every", "trainer.compile",
        "trainer.resume", "optimizer.lr", "optimizer.momentum", "optimizer.betas",
        "optimizer.weight_decay", "lr.final_factor", "lr.milestones", "task.condition",
        "task.steps_per_epoch", "model.hidden", "hydra.job.chdir"]
SPECIAL = ["null", "true", "false", "[]", "[1,2]", "{a: 1}", "nan", "inf", "-inf", "1e309",
           "''", "${oops}", "${now:}", "a,b", "range(0,3)", "choice(a,b)", "interval(0,1)",
           "mnist", "cifar10", "cnn", "prodigy", "gen_exact", "newt", "cosine", "'", "\"", "=",
           "%", "\\", " ", "-1", "0", "1e-400"]

keys = st.one_of(st.sampled_from(KEYS),
                 st.text(alphabet=string.ascii_lowercase + "._/@", min_size=1, max_size=12))
values = st.one_of(st.integers(-1000, 1000), st.floats(allow_nan=True, allow_infinity=True),
                   st.sampled_from(SPECIAL),
                   st.text(alphabet=string.printable.replace("\n", "").replace("\r", "")
                           .replace("\x0b", "").replace("\x0c", ""), max_size=10))
overrides = st.builds(lambda prefix, key, value: f"{prefix}{key}={value}",
                      st.sampled_from(["", "", "", "+", "++", "~"]), keys, values)


def gen_train(*args: str) -> tuple[int, str]:
    sys.argv = ["gen-train", *args]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main()
        except SystemExit as exit_:
            code = exit_.code
    return int(code or 0), err.getvalue()


@pytest.fixture(autouse=True)
def _restore_argv():
    argv = sys.argv
    yield
    sys.argv = argv


def malformed_override_property(profile: str, **narrower):
    """The property, searched with a hypothesis profile (``conftest.py``): "fast" in the
    default suite (fewer examples: each is a gen-train run), "full" under ``-m slow``."""

    @settings(settings.get_profile(profile), **narrower)
    @given(override=overrides)
    @example(override="hydra.job.chdir=${oops}")  # Hydra's settings resolve only at run time
    @example(override="hydra.run.dir=${nope:x}")
    def test(override):
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = Path(tmp) / "run"
            code, stderr = gen_train("task=quadratic", "trainer.max_steps=2",
                                     "trainer.plots=false", "trainer.progress=false",
                                     f"hydra.run.dir={run_dir}", override)
            assert "Traceback" not in stderr, (override, stderr)
            if code == 0:
                assert (run_dir / "summary.json").is_file(), override
            else:
                lines = [line for line in stderr.splitlines() if line.strip()]
                assert len(lines) == 1 and lines[0].startswith("gen-train: "), (override, stderr)

    return test


test_malformed_override_runs_or_fails_with_one_line = malformed_override_property("fast", max_examples=8)
test_malformed_override_full_search = pytest.mark.slow(malformed_override_property("full"))
