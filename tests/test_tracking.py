"""What a run leaves behind: TensorBoard events, summary.json, plots, and reading them back."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams import metadata as hp_metadata

from conftest import chosen_marker_column, chosen_marker_expected
from genlr.line_profile import LineProfile
from genlr.tracking import (
    DEFAULT_HPARAM_METRICS,
    REQUIRED_KEYS,
    REQUIRED_SUBKEYS,
    RunStats,
    RunWriter,
    build_summary,
    find_runs,
    flatten_hparams,
    missing_keys,
    read_history,
    read_scalars,
    read_summary,
    write_plots,
    write_summary,
)
from genlr.tracking.tensorboard import line_profile_figure, render_figure

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

CONFIG = {
    "task": {"name": "mnist", "batch_size": 128},
    "lr": {"name": "parabola", "every": 5, "clip": None, "points": [-1, 0, 1]},
    "optimizer": {"name": "adamw", "lr": 1e-3},
    "amp": False,
    "seed": 0,
}

PROFILE = LineProfile(step=3, s=(-1.0, 0.0, 1.0, 2.0), loss=(1.3, 1.0, 0.9, 1.2),
                      model=(1.35, 1.0, 0.85, 1.1), chosen=0.9)


def accumulator(tb_dir) -> EventAccumulator:
    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


@pytest.fixture
def logged_run(tmp_path):
    """A run directory after a short fake training run: scalars, hparams, one profile."""
    run_dir = tmp_path / "run"
    n_steps = 300
    with RunWriter(run_dir, flush_secs=1) as writer:
        writer.hparams(CONFIG)
        for step in range(n_steps):
            writer.scalars(step, {
                "train/loss": 1.0 / (step + 1),
                "train/lr": 0.1,
                "lr/group0": 0.1,
                "lr/group1": 0.01,
                "time/step_ms": 2.0,
                "method/alpha_star": 1.5,
                "method/skipped": None,  # None is skipped, not logged
            })
            if step % 100 == 99:
                writer.scalars(step, {"eval/loss": 0.5, "eval/acc": 0.9})
        writer.line_profile(3, PROFILE)
        writer.end_session("completed")
    return run_dir, n_steps


def test_events_tags_points_and_single_events_dir(logged_run):
    run_dir, n_steps = logged_run
    # Exactly one events folder, tb/, and no sub-folders (add_hparams would make one).
    event_files = list(run_dir.rglob("events.out.tfevents.*"))
    assert [f.parent for f in event_files] == [run_dir / "tb"]
    assert [p for p in (run_dir / "tb").iterdir() if p.is_dir()] == []

    acc = accumulator(run_dir / "tb")
    expected = {"train/loss", "train/lr", "lr/group0", "lr/group1", "time/step_ms",
                "method/alpha_star", "eval/loss", "eval/acc"}
    assert set(acc.Tags()["scalars"]) == expected
    assert len(acc.Scalars("train/loss")) == n_steps
    assert [e.step for e in acc.Scalars("eval/acc")] == [99, 199, 299]
    assert acc.Tags()["images"] == ["method/line_profile"]
    image = acc.Images("method/line_profile")[0]
    assert image.step == 3 and image.encoded_image_string.startswith(PNG_SIGNATURE)


def test_hparams_plugin_data(logged_run):
    run_dir, _ = logged_run
    content = accumulator(run_dir / "tb").PluginTagToContent(hp_metadata.PLUGIN_NAME)
    assert hp_metadata.SESSION_START_INFO_TAG in content
    # No experiment summary by default: TensorBoard then unions the hparams of a sweep.
    assert hp_metadata.EXPERIMENT_TAG not in content
    start = hp_metadata.parse_session_start_info_plugin_data(
        content[hp_metadata.SESSION_START_INFO_TAG])
    values = {k: v.WhichOneof("kind") for k, v in start.hparams.items()}
    assert values == {
        "task.name": "string_value", "task.batch_size": "number_value",
        "lr.name": "string_value", "lr.every": "number_value", "lr.clip": "string_value",
        "lr.points": "string_value", "optimizer.name": "string_value",
        "optimizer.lr": "number_value", "amp": "bool_value", "seed": "number_value",
    }
    assert start.hparams["lr.clip"].string_value == "None"
    assert start.hparams["optimizer.lr"].number_value == pytest.approx(1e-3)
    end = hp_metadata.parse_session_end_info_plugin_data(
        content[hp_metadata.SESSION_END_INFO_TAG])
    assert end.status == api_pb2.STATUS_SUCCESS


def test_hparams_declared_metrics(tmp_path):
    with RunWriter(tmp_path) as writer:
        writer.hparams({"a": 1}, metrics={"eval/acc": 0.0, "eval/loss": 0.0, "train/loss": 0.0})
    content = accumulator(tmp_path / "tb").PluginTagToContent(hp_metadata.PLUGIN_NAME)
    experiment = hp_metadata.parse_experiment_plugin_data(content[hp_metadata.EXPERIMENT_TAG])
    assert [m.name.tag for m in experiment.metric_infos] == list(DEFAULT_HPARAM_METRICS)
    assert [h.name for h in experiment.hparam_infos] == ["a"]
    # The metric values given are not logged as stray scalar points.
    assert accumulator(tmp_path / "tb").Tags()["scalars"] == []


def test_end_session_status(tmp_path):
    with RunWriter(tmp_path / "interrupted") as writer:
        writer.end_session("interrupted")  # records nothing: a resume may still end it
        with pytest.raises(ValueError):
            writer.end_session("exploded")
    with RunWriter(tmp_path / "interrupted", purge_step=0) as writer:
        writer.end_session("diverged")
    content = accumulator(tmp_path / "interrupted" / "tb").PluginTagToContent(
        hp_metadata.PLUGIN_NAME)
    end = hp_metadata.parse_session_end_info_plugin_data(content[hp_metadata.SESSION_END_INFO_TAG])
    assert end.status == api_pb2.STATUS_FAILURE


def test_line_profile_image_marks_the_chosen_step():
    marked = render_figure(line_profile_figure(PROFILE))
    assert chosen_marker_column(marked) == pytest.approx(chosen_marker_expected(PROFILE), abs=1.0)
    unmarked = render_figure(line_profile_figure(dataclasses.replace(PROFILE, chosen=math.nan)))
    assert chosen_marker_column(unmarked) is None


def test_flatten_hparams():
    flat = flatten_hparams({"a": {"b": {"c": 1}}, "t": torch.tensor(2.0), "n": None, "f": 0.5})
    assert flat == {"a.b.c": 1, "t": "tensor(2.)", "n": "None", "f": 0.5}


def test_read_scalars_keeps_every_point(logged_run):
    run_dir, n_steps = logged_run
    for path in (run_dir, run_dir / "tb"):
        scalars = read_scalars(path)
        loss = scalars["train/loss"]
        assert len(loss) == n_steps
        step, wall_time, value = loss[10]
        assert step == 10 and wall_time > 0 and value == pytest.approx(1 / 11)
    assert read_history(run_dir)["eval/acc"] == [(s, pytest.approx(0.9)) for s in (99, 199, 299)]
    assert read_scalars(run_dir / "missing") == {}


def test_read_scalars_beyond_default_reservoir(tmp_path):
    # TensorBoard keeps 10,000 scalars per tag by default, sampled; we keep them all.
    n_points = 10_050
    with RunWriter(tmp_path) as writer:
        for step in range(n_points):
            writer.scalars(step, {"train/loss": float(step)})
    points = read_scalars(tmp_path)["train/loss"]
    assert [p[0] for p in points] == list(range(n_points))


def test_read_scalars_resumed_run(tmp_path):
    # A resumed run appends a second event file to tb/; with purge_step, what the
    # interrupted attempt logged after the checkpoint (steps 5..9) is superseded.
    with RunWriter(tmp_path) as writer:
        for step in range(10):
            writer.scalars(step, {"train/loss": 1.0})
    with RunWriter(tmp_path, purge_step=5) as writer:
        for step in range(5, 15):
            writer.scalars(step, {"train/loss": 2.0})
    assert len(list((tmp_path / "tb").iterdir())) == 2
    history = read_history(tmp_path)["train/loss"]
    assert [s for s, _ in history] == list(range(15))
    assert [v for _, v in history] == [1.0] * 5 + [2.0] * 10


def test_run_stats():
    stats = RunStats()
    losses = [2.0, 1.0, 0.5, float("nan")]
    for step, loss in enumerate(losses):
        stats.record_step(step, train_loss=loss, lr=[0.1 * (step + 1), 0.01], step_ms=step + 1.0)
    stats.record_eval(1, eval_loss=1.5, eval_acc=0.6)
    stats.record_eval(3, eval_loss=1.7, eval_acc=0.7)

    assert stats.step_time_ms() == {"median": 2.5, "p90": pytest.approx(3.7), "mean": 2.5}
    assert stats.lr_summary() == {"initial": 0.1, "final": pytest.approx(0.4),
                                  "min": 0.1, "max": pytest.approx(0.4)}
    final = stats.final()
    assert math.isnan(final["train_loss"]) and final["eval_acc"] == 0.7
    assert stats.best() == {
        "train_loss": {"value": 0.5, "step": 2},  # NaN never counts as best
        "eval_loss": {"value": 1.5, "step": 1},
        "eval_acc": {"value": 0.7, "step": 3},
    }
    history = stats.history()
    assert set(history) == {"train/loss", "eval/loss", "eval/acc", "time/step_ms",
                            "train/lr", "lr/group0", "lr/group1"}
    assert history["lr/group1"] == [(s, 0.01) for s in range(4)]

    empty = RunStats()
    assert empty.step_time_ms() == {"median": None, "p90": None, "mean": None}
    assert empty.lr_summary()["initial"] is None
    assert empty.best()["eval_acc"] is None
    assert empty.history() == {}
    single = RunStats()
    single.record_step(0, lr=0.3, step_ms=5.0)
    assert single.history() == {"train/lr": [(0, 0.3)], "time/step_ms": [(0, 5.0)]}


FULL_SUMMARY_ARGS = dict(
    components={"task": "mnist", "model": "cnn", "optimizer": "adamw", "lr_method": "parabola"},
    seed=0, status="diverged", message="", steps=4, epochs=1, wall_time_s=1.0,
    peak_memory_mb=float("inf"), method_passes={"forward": 8, "backward": 0, "hvp": 0},
    device="cpu", amp="off", torch_version=torch.__version__, world_size=1, trainer={})


def full_summary(stats: RunStats) -> dict:
    return build_summary(stats, **FULL_SUMMARY_ARGS)


def test_summary_is_built_in_contract_order_and_counts_every_pass():
    stats = RunStats()
    stats.record_step(1, train_loss=1.0, lr=0.1, step_ms=300.0)
    stats.record_step(2, train_loss=0.5, lr=0.1, step_ms=500.0)
    summary = full_summary(stats)
    assert list(summary)[:len(REQUIRED_KEYS)] == list(REQUIRED_KEYS)
    assert summary["passes"] == {"forward": 12, "backward": 4, "hvp": 0}  # 4 steps + extras
    assert summary["train_time_s"] == pytest.approx(0.8)
    with pytest.raises(ValueError, match="status"):
        build_summary(stats, **{**FULL_SUMMARY_ARGS, "status": "done"})


def test_run_stats_state_dict_round_trips_through_a_safe_load(tmp_path):
    stats = RunStats()
    stats.record_step(0, lr=[0.1, 0.01])
    stats.record_step(1, train_loss=2.0, lr=[0.2, 0.02], step_ms=3.0)
    stats.record_eval(1, eval_loss=1.5, eval_acc=0.25)
    torch.save(stats.state_dict(), tmp_path / "stats.pt")
    restored = RunStats()
    restored.load_state_dict(torch.load(tmp_path / "stats.pt", weights_only=True))
    assert restored.history() == stats.history()
    assert full_summary(restored) == full_summary(stats)


def test_summary_round_trip(tmp_path):
    stats = RunStats()
    stats.record_step(0, train_loss=1.0, lr=0.1, step_ms=3.0)
    stats.record_step(1, train_loss=float("nan"), lr=0.2, step_ms=4.0)
    summary = full_summary(stats) | {"extra": {"tensor": torch.tensor([1.0, float("-inf")]),
                                               "path": tmp_path, "tuple": (1, 2)}}
    assert missing_keys(summary) == []
    path = write_summary(tmp_path, summary)
    assert path == tmp_path / "summary.json"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temp file left

    loaded = read_summary(tmp_path)
    json.loads(path.read_text())  # strict JSON: no NaN / Infinity literals
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()
    assert all(key in loaded for key in REQUIRED_KEYS)
    for key, subkeys in REQUIRED_SUBKEYS.items():
        assert set(subkeys) <= set(loaded[key])
    assert loaded["final"]["train_loss"] is None  # NaN -> null
    assert loaded["peak_memory_mb"] is None  # inf -> null
    assert loaded["best"]["train_loss"] == {"value": 1.0, "step": 0}
    assert loaded["extra"] == {"tensor": [1.0, None], "path": str(tmp_path), "tuple": [1, 2]}
    assert read_summary(path) == loaded

    # Rewriting (e.g. at the end of a resumed run) replaces the file.
    write_summary(tmp_path, loaded | {"status": "completed"})
    assert read_summary(tmp_path)["status"] == "completed"


def test_missing_keys():
    assert "status" in missing_keys({})
    assert missing_keys({**{k: {} for k in REQUIRED_KEYS}, "lr": {"initial": 1}})[:2] == [
        "step_time_ms.median", "step_time_ms.p90"]


def assert_png(path):
    data = path.read_bytes()
    assert len(data) > 0 and data.startswith(PNG_SIGNATURE), path


def test_plots_from_events_and_stats(logged_run):
    run_dir, _ = logged_run
    written = write_plots(run_dir, read_history(run_dir))
    assert sorted(p.name for p in written) == ["accuracy.png", "loss.png", "lr.png"]
    for path in written:
        assert path.parent == run_dir / "plots"
        assert_png(path)
    # read_scalars' (step, wall_time, value) points are accepted as they are.
    assert len(write_plots(run_dir, read_scalars(run_dir))) == 3


@pytest.mark.parametrize("history", [
    {},
    {"train/loss": [(0, 1.0)], "train/lr": [(0, 0.1)]},
    {"train/loss": [(0, 1.0), (1, float("nan")), (2, float("inf"))],
     "eval/acc": [(1, float("nan"))], "train/lr": [(0, 0.0), (1, 0.0)]},
    {"train/loss": [(0, float("nan"))], "train/lr": [(0, -1.0), (1, 1e-3)]},
], ids=["empty", "single-point", "non-finite-and-zero-lr", "all-nan"])
def test_plots_edge_cases(tmp_path, history):
    written = write_plots(tmp_path, history)
    names = {p.name for p in written}
    assert {"loss.png", "lr.png"} <= names
    assert ("accuracy.png" in names) == bool(history.get("eval/acc"))
    for path in written:
        assert_png(path)


def test_find_runs(tmp_path):
    sweep = tmp_path / "multirun" / "2025-01-01" / "12-00-00"
    runs = [sweep / str(i) for i in range(3)] + [sweep / "nested" / "deeper" / "0"]
    for run in runs:
        write_summary(run, {"status": "completed"})
    (sweep / "3" / "tb").mkdir(parents=True)  # a job that never finished: not a run
    (sweep / ".hydra").mkdir()
    assert find_runs(tmp_path) == sorted(runs)
    assert find_runs(sweep / "1") == [sweep / "1"]  # a single run
    assert find_runs(tmp_path / "absent") == []


def test_lr_png_draws_the_rules_own_lr_beside_the_applied_one():
    """GeN's own lr (before the horizon scale) is a second line where it differs from the
    applied one, so a rule that held its lr does not look like a plain cosine."""
    from genlr.tracking.plots import lr_series

    applied = [(s, 1e-3 * (1 - s / 10)) for s in range(10)]
    same = lr_series({"train/lr": applied, "method/gen_lr": applied})
    assert list(same) == ["lr"]
    held = lr_series({"train/lr": applied, "method/gen_lr": [(s, 1e-3) for s in range(10)]})
    assert list(held) == ["applied lr", "the rule's own lr (before the horizon scale)"]
