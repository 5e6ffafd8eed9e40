"""The character-level language task and the GPT model: offline data, exact batching,
metrics, the model's shape contract, and the exact curvature on it."""

from __future__ import annotations

import math
import random

import pytest
import torch
from torch import nn

from genlr.curvature.directional import DirectionalDerivatives
from genlr.models import IncompatibleModelError, build_model
from genlr.tasks import DatasetNotFoundError, build_task

TEXT = "".join(random.Random(0).choices("abcdefghij klmnop.,\n", k=4000))  # no repeated windows


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def small_task(text_file, **options):
    task = build_task("charlm", path=str(text_file), block_size=8, **options)
    task.setup("cpu")
    return task


def test_default_corpus_is_the_standard_library_offline():
    task = build_task("charlm", max_chars=50_000)
    task.setup("cpu")
    assert 50 < task.num_outputs < 200  # printable ASCII and a few others
    x, y = next(task.train_batches(4, epoch=0, seed=0))
    assert x.shape == y.shape == (4, 64) and x.dtype == torch.int64
    assert "def " in task.decode(torch.cat([*x]))


def test_batches_are_shifted_windows_of_the_text(text_file):
    task = small_task(text_file)
    ids = task._windows("train")
    for x, y in task.train_batches(5, epoch=0, seed=1):
        assert torch.equal(x[:, 1:], y[:, :-1])
        for row_x, row_y in zip(x, y):
            window = torch.cat([row_x, row_y[-1:]])
            starts = [i for i in range(len(ids) - 8) if torch.equal(ids[i:i + 9], window)]
            assert starts  # a real window of the training text


def test_epochs_are_deterministic_resumable_and_cover_the_text_once(text_file):
    task = small_task(text_file)
    full = list(task.train_batches(4, epoch=2, seed=3))
    assert len(full) == task.steps_per_epoch(4)
    again = list(task.train_batches(4, epoch=2, seed=3))
    resumed = list(task.train_batches(4, epoch=2, seed=3, start=2))
    for a, b in zip(full, again):
        assert torch.equal(a[0], b[0])
    for a, b in zip(full[2:], resumed):
        assert torch.equal(a[0], b[0])
    other = list(task.train_batches(4, epoch=3, seed=3))
    assert not torch.equal(full[0][0], other[0][0])
    rows = torch.cat([x for x, _ in full])
    assert len({tuple(r.tolist()) for r in rows}) == len(rows)  # no window twice


def test_metrics_are_loss_bits_per_char_and_accuracy(text_file):
    task = small_task(text_file)
    torch.manual_seed(0)
    model = build_model("gpt", task, width=16, depth=1, heads=2).eval()
    x, y = next(task.eval_batches(10))
    sums = task.evaluate(model, (x, y))
    assert float(sums["count"]) == y.numel()
    assert float(sums["bpc_sum"]) == pytest.approx(float(sums["loss_sum"]) / math.log(2))
    assert float(sums["loss_sum"]) / y.numel() == pytest.approx(float(task.loss(model, (x, y))), rel=1e-5)
    total = sum(int(b[1].numel()) for b in task.eval_batches(7))
    assert total == (len(task._windows("eval")) - 1) // 8 * 8


def test_bad_input_is_one_line(tmp_path, text_file):
    with pytest.raises(DatasetNotFoundError, match="task.path=.*not a file"):
        build_task("charlm", path=str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="fewer than block_size"):
        build_task("charlm", path=str(text_file), block_size=4000).setup("cpu")
    with pytest.raises(ValueError, match=r"^trainer.batch_size=1000: task charlm has \d+ training windows"):
        small_task(text_file).steps_per_epoch(1000)


def test_gpt_shapes_tied_weights_and_compatibility(text_file):
    task = small_task(text_file)
    model = build_model("gpt", task, width=16, depth=2, heads=4)
    assert model.head.weight is model.token.weight
    x, _ = next(task.train_batches(3, epoch=0, seed=0))
    assert model(x).shape == (3, 8, task.num_outputs)
    with pytest.raises(IncompatibleModelError, match="gpt.*language task"):
        build_model("gpt", build_task("fashion_mnist"))
    with pytest.raises(IncompatibleModelError, match="mlp.*character ids.*model=gpt"):
        build_model("mlp", task)
    with pytest.raises(ValueError, match="not a multiple of heads"):
        build_model("gpt", task, width=10, heads=4)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_exact_curvature_on_gpt_takes_the_taylor_path(text_file, dropout):
    task = small_task(text_file)
    torch.manual_seed(0)
    model = build_model("gpt", task, width=16, depth=2, heads=2, dropout=dropout).double()
    batch = next(task.train_batches(4, epoch=0, seed=0))
    params = list(model.parameters())
    gen = torch.Generator().manual_seed(1)
    d = [1e-2 * torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    dd = DirectionalDerivatives(model, task.loss)
    taylor = dd.derivatives(params, d, batch)
    assert dd.path == "taylor"
    reference = dd.derivatives(params, d, batch, "double_backward")
    assert taylor == pytest.approx(reference, rel=1e-9)
    assert isinstance(model, nn.Module) and model.training


def test_a_text_is_read_as_utf8_and_a_binary_file_refused(tmp_path):
    from genlr.tasks.text import read_text

    euros = tmp_path / "euros.txt"
    euros.write_text("€" * 10, encoding="utf-8")  # 3 bytes each: 8 bytes read cut the third
    assert read_text(str(euros), max_chars=2) == "€€"
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.txt: not UTF-8 text \(byte 3"):
        read_text(str(tmp_path / "latin1.txt"), max_chars=100)
    (tmp_path / "nul.bin").write_bytes(b"text\x00more")
    with pytest.raises(ValueError, match="a binary file"):
        build_task("charlm", path=str(tmp_path / "nul.bin")).prepare_data()
