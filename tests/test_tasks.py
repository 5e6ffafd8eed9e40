"""Tasks: registry, data loading (fake files in the real formats), batching, losses."""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
from pathlib import Path

import pytest
import torch
import torchvision
from torch.func import functional_call, jvp

from conftest import FAKE_TEST, FAKE_TRAIN
from genlr.models import MODELS, build_model
from genlr.options import options_of
from genlr.tasks import TASKS, DatasetNotFoundError, build_task
from genlr.tasks.images import DEBIAN_FASHION_MNIST, read_idx

REPO = Path(__file__).resolve().parents[1]
SYNTHETIC = ["quadratic", "rosenbrock", "beale", "logreg", "teacher"]
SMALL = {"logreg": {"train_samples": 100, "test_samples": 30},
         "teacher": {"train_samples": 100, "test_samples": 30}}


def synthetic(name: str, **options):
    task = build_task(name, **{**SMALL.get(name, {}), **options})
    task.setup("cpu")
    return task


# ------------------------------------------------------------------------ registry
def test_registry_and_options():
    assert {"fashion_mnist", "mnist", "cifar10", "quadratic", "rosenbrock", "beale", "logreg",
            "teacher"} <= set(TASKS)
    for name, cls in TASKS.items():
        assert cls.name == name
        options_of(cls)  # every option keyword-only, with a default and a simple type
        build_task(name)  # constructing reads no data


def test_unknown_task_lists_names():
    with pytest.raises(ValueError, match="fashion_mnist.*quadratic"):
        build_task("imagenet")


# ---------------------------------------------------------------- batching contract
@pytest.mark.parametrize("name", ["logreg", "teacher"])
def test_in_memory_batches(name):
    task = synthetic(name)
    steps = task.steps_per_epoch(16)
    assert steps == 100 // 16  # the partial last batch is dropped
    batches = list(task.train_batches(16, epoch=0, seed=0))
    assert len(batches) == steps
    x, y = batches[0]
    assert x.shape == (16, *task.input_shape) and x.dtype == torch.float32
    assert y.dtype == (torch.long if task.classification else torch.float32)
    assert len(y) == 16

    # deterministic in (seed, epoch); another epoch or seed gives another order
    again = list(task.train_batches(16, epoch=0, seed=0))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))
    assert not torch.equal(next(task.train_batches(16, epoch=1, seed=0))[0], x)
    assert not torch.equal(next(task.train_batches(16, epoch=0, seed=1))[0], x)

    # resuming at batch 3 gives the same batches as the tail of the full epoch
    tail = list(task.train_batches(16, epoch=0, seed=0, start=3))
    assert len(tail) == steps - 3
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches[3:], tail))

    # evaluation: the whole test set, in order, last batch partial
    evals = list(task.eval_batches(8))
    assert sum(len(b[1]) for b in evals) == 30 and len(evals[-1][1]) == 30 % 8
    assert torch.equal(torch.cat([b[0] for b in evals]), torch.cat([b[0] for b in task.eval_batches(30)]))

    with pytest.raises(ValueError, match=r"^trainer.batch_size=1000: task .* has \d+ training examples; choose at most"):
        task.steps_per_epoch(1000)


def test_batches_need_setup():
    with pytest.raises(RuntimeError, match="setup"):
        next(build_task("logreg").train_batches(8, 0, 0))


def test_epoch_order_is_a_permutation():
    task = synthetic("logreg", train_samples=64)
    seen = torch.cat([x for x, _ in task.train_batches(16, epoch=2, seed=5)])
    x_all = task._data("train")[0]
    assert sorted(map(tuple, seen.tolist())) == sorted(map(tuple, x_all.tolist()))


def test_synthetic_data_depend_on_task_seed_only():
    a, b, c = synthetic("teacher"), synthetic("teacher"), synthetic("teacher", seed=1)
    assert torch.equal(a._data("train")[1], b._data("train")[1])
    assert not torch.equal(a._data("train")[1], c._data("train")[1])
    state = torch.get_rng_state()
    synthetic("teacher"), synthetic("logreg"), synthetic("quadratic")
    assert torch.equal(state, torch.get_rng_state())  # model init is left to the run's seed


def test_logreg_labels_follow_the_teacher():
    task = synthetic("logreg", classes=3, train_samples=2000, label_noise=0.0)
    x, y = task._data("train")
    assert set(y.unique().tolist()) == {0, 1, 2}
    # a linear model fits noiseless teacher labels well above chance
    model = build_model("linear", task)
    optimizer = torch.optim.LBFGS(model.parameters(), max_iter=50)

    def closure():
        optimizer.zero_grad()
        loss = task.loss(model, (x, y))
        loss.backward()
        return loss

    optimizer.step(closure)
    metrics = task.evaluate(model, (x, y))
    assert metrics["correct"] / metrics["count"] > 0.9


# ------------------------------------------------------------- coordinate problems
def test_quadratic_optimum_and_conditioning():
    task = synthetic("quadratic", dim=10, condition=50.0)
    eigenvalues = torch.linalg.eigvalsh(task.A.double())
    assert eigenvalues.max() / eigenvalues.min() == pytest.approx(50.0, rel=1e-3)
    optimum = task.optimum()
    assert torch.allclose(task.A @ optimum, task.b, atol=1e-4)
    model = task.init_model()
    with torch.no_grad():
        model.theta.copy_(optimum)
    task.loss(model, 0).backward()
    assert model.theta.grad.abs().max() < 1e-4
    metrics = task.evaluate(model, next(task.eval_batches(1)))
    assert metrics["distance_sum"] < 1e-5 and abs(metrics["gap_sum"]) < 1e-5
    assert metrics["count"] == 1


def test_quadratic_exact_line_search_step():
    """Steepest descent's exact step g^T g / g^T A g is GeN's -phi'(0)/phi''(0)."""
    task = synthetic("quadratic", dim=20, condition=100.0)
    model = task.init_model()
    with torch.no_grad():
        model.theta.normal_(generator=torch.Generator().manual_seed(0))
    task.loss(model, 0).backward()
    g = model.theta.grad.clone()
    assert torch.allclose(g, task.A @ model.theta.detach() - task.b, atol=1e-5)
    exact = float(g @ g / (g @ task.A @ g))

    theta = model.theta.detach()

    def phi(s):
        return task.loss(lambda *_: theta - s * g, 0)

    s0 = torch.tensor(0.0)
    d1 = torch.func.grad(phi)(s0)
    d2 = torch.func.grad(torch.func.grad(phi))(s0)
    assert float(-d1 / d2) == pytest.approx(exact, rel=1e-4)
    # phi'(s*) = 0 up to float32 rounding, relative to phi'(0) = -g^T g
    assert abs(float(torch.func.grad(phi)(torch.tensor(exact)))) < 1e-5 * float(g @ g)
    assert float(phi(torch.tensor(exact))) < float(phi(s0))


@pytest.mark.parametrize("name,start,optimum", [("rosenbrock", (-1.2, 1.0), (1.0, 1.0)),
                                                ("beale", (1.0, 1.0), (3.0, 0.5))])
def test_two_dimensional_problems(name, start, optimum):
    task = synthetic(name)
    model = task.init_model()
    assert model.theta.tolist() == pytest.approx(list(start))
    assert task.optimum().tolist() == list(optimum)
    loss = task.loss(model, 0)
    assert loss > 0
    with torch.no_grad():
        model.theta.copy_(task.optimum())
    loss = task.loss(model, 0)
    loss.backward()
    assert loss.item() == 0.0 and model.theta.grad.abs().max() == 0
    custom = synthetic(name, x0=0.5, y0=-0.5).init_model()
    assert custom.theta.tolist() == [0.5, -0.5]


@pytest.mark.parametrize("name", ["quadratic", "rosenbrock", "beale"])
def test_the_run_seed_draws_the_start(name):
    """The global RNG (seeded with the run's seed) moves the start by start_noise * N(0, I)."""
    def start(seed, **options):
        torch.manual_seed(seed)
        task = synthetic(name, **options)
        return task.init_model().theta.detach(), task

    noisy = {"start_noise": 0.5}
    (a, task), (b, _), (c, _) = start(0, **noisy), start(0, **noisy), start(1, **noisy)
    assert torch.equal(a, b) and not torch.equal(a, c) and task.depends_on_seed
    (fixed, task), (also, _) = start(0, start_noise=0.0), start(1, start_noise=0.0)
    assert torch.equal(fixed, task.start()) and torch.equal(fixed, also)
    assert not task.depends_on_seed
    with pytest.raises(ValueError, match="start_noise must be >= 0"):
        build_task(name, start_noise=-1.0)


def test_quadratic_start_is_random_by_default_and_2d_starts_are_classic():
    assert build_task("quadratic").depends_on_seed
    assert not build_task("rosenbrock").depends_on_seed and not build_task("beale").depends_on_seed


def test_coordinate_batches_are_step_indices():
    task = synthetic("rosenbrock", steps_per_epoch=7)
    assert task.steps_per_epoch(123) == 7
    assert list(task.train_batches(1, epoch=3, seed=0)) == list(range(7))
    assert list(task.train_batches(1, epoch=3, seed=0, start=5)) == [5, 6]
    assert len(list(task.eval_batches(1))) == 1
    assert task.input_shape == () and task.default_model == "coords"


def test_coordinate_loss_is_functional():
    """Exact GeN runs jvp through functional_call: the coordinates model must allow it."""
    task = synthetic("beale")
    model = task.init_model()
    params = dict(model.named_parameters())
    tangent = {k: torch.ones_like(v) for k, v in params.items()}
    _, derivative = jvp(lambda p: task.loss(lambda *args: functional_call(model, p, args), 0),
                        (params,), (tangent,))
    task.loss(model, 0).backward()
    assert derivative.item() == pytest.approx(model.theta.grad.sum().item(), rel=1e-5)


# ------------------------------------------------------------------ image data sets
def test_mnist_reads_torchvision_layout(fake_mnist):
    root, arrays = fake_mnist
    task = build_task("mnist", data_root=str(root), download=False)
    task.setup("cpu")
    assert (task.train_size, task.test_size) == (FAKE_TRAIN, FAKE_TEST)
    x, y = next(task.train_batches(16, epoch=0, seed=0))
    assert x.shape == (16, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.long
    # evaluation order is the file's; values are normalised with MNIST's statistics
    x, y = next(task.eval_batches(FAKE_TEST))
    expected = (torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).float() / 255 - 0.1307) / 0.3081
    assert torch.allclose(x[:, 0], expected, atol=1e-5)
    assert y.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert task._data("train")[0].dtype == torch.uint8  # held compact


def test_train_size_option(fake_mnist):
    root, _ = fake_mnist
    task = build_task("mnist", data_root=str(root), download=False, train_size=32)
    task.setup("cpu")
    assert task.train_size == 32 and task.test_size == FAKE_TEST


def test_cifar10_reads_python_pickles(fake_cifar10):
    root, arrays = fake_cifar10
    task = build_task("cifar10", data_root=str(root), download=False)
    task.setup("cpu")
    assert (task.train_size, task.test_size) == (FAKE_TRAIN // 5 * 5, FAKE_TEST)
    x, y = next(task.eval_batches(FAKE_TEST))
    assert x.shape == (FAKE_TEST, 3, 32, 32)
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    expected = (torch.from_numpy(arrays["test_images"]).float() / 255 - mean) / std
    assert torch.allclose(x, expected, atol=1e-5)  # channel planes land in NCHW order
    assert y.tolist() == arrays["test_labels"].tolist()


def test_cifar10_augmentation(fake_cifar10):
    root, _ = fake_cifar10
    plain = build_task("cifar10", data_root=str(root), download=False)
    augmented = build_task("cifar10", data_root=str(root), download=False, augment=True)
    plain.setup("cpu"), augmented.setup("cpu")
    a = next(augmented.train_batches(8, epoch=0, seed=0))[0]
    b = next(augmented.train_batches(8, epoch=0, seed=0))[0]
    p = next(plain.train_batches(8, epoch=0, seed=0))[0]
    assert torch.equal(a, b) and not torch.equal(a, p) and a.shape == p.shape
    # resuming reproduces the augmentation of the skipped-to batch
    full = list(augmented.train_batches(8, epoch=1, seed=0))
    assert torch.equal(next(augmented.train_batches(8, epoch=1, seed=0, start=2))[0], full[2][0])
    # evaluation is never augmented
    assert torch.equal(next(augmented.eval_batches(8))[0], next(plain.eval_batches(8))[0])


def test_random_crop_flip_moves_pixels_without_inventing_them():
    from genlr.tasks.images import random_crop_flip

    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.uint8).view(2, 3, 8, 8)
    y = random_crop_flip(x, torch.Generator().manual_seed(0), pad=2)
    assert y.shape == x.shape and y.dtype == x.dtype
    for i in range(2):
        values = set(y[i].flatten().tolist()) - {0}
        assert values <= set(x[i].flatten().tolist())


def test_fashion_mnist_from_debian_layout(fake_debian_fashion, monkeypatch, tmp_path):
    folder, arrays = fake_debian_fashion
    monkeypatch.setenv("GENLR_DATA", str(tmp_path / "empty-cache"))
    task = build_task("fashion_mnist", download=False)
    task.setup("cpu")
    assert (task.train_size, task.test_size) == (FAKE_TRAIN, FAKE_TEST)
    _, y = next(task.eval_batches(FAKE_TEST))
    assert y.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()


def test_fashion_mnist_data_root_comes_first(fake_fashion_root, fake_debian_fashion):
    root, arrays = fake_fashion_root
    task = build_task("fashion_mnist", data_root=str(root), download=False)
    task.setup("cpu")
    _, y = next(task.eval_batches(FAKE_TEST))
    assert y.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()  # not the Debian copy's


@pytest.mark.parametrize("kind", ["missing", "empty", "file"])
def test_a_data_root_given_is_the_only_place_looked(kind, fake_debian_fashion, tmp_path):
    """A data_root the user names is never silently replaced by the Debian copy."""
    root = tmp_path / "root"
    if kind == "empty":
        root.mkdir()
    elif kind == "file":
        root.write_text("")
    task = build_task("fashion_mnist", data_root=str(root), download=False)
    with pytest.raises(DatasetNotFoundError) as error:
        task.prepare_data()
    message = str(error.value)
    assert str(root) in message and str(fake_debian_fashion[0]) not in message, message
    assert ("is a file" in message) == (kind == "file")
    with pytest.raises(DatasetNotFoundError):
        task.setup("cpu")


def test_prepare_data_finds_without_reading(fake_mnist, monkeypatch):
    root, _ = fake_mnist
    task = build_task("mnist", data_root=str(root), download=False)
    monkeypatch.setattr(type(task), "_from_torchvision", lambda *a, **k: pytest.fail("read"))
    task.prepare_data()


@pytest.mark.parametrize("size", [0, -10])
def test_train_size_must_be_positive(size):
    with pytest.raises(ValueError, match=f"train_size must be a positive .*got {size}"):
        build_task("mnist", train_size=size)


@pytest.mark.skipif(not (DEBIAN_FASHION_MNIST / "t10k-labels-idx1-ubyte.gz").is_file(),
                    reason="dataset-fashion-mnist is not installed")
def test_fashion_mnist_debian_package():
    task = build_task("fashion_mnist", data_root=None, download=False)
    task.setup("cpu")
    assert (task.train_size, task.test_size) == (60000, 10000)
    x, y = next(task.train_batches(128, epoch=0, seed=0))
    assert x.shape == (128, 1, 28, 28) and y.max() <= 9
    assert abs(float(x.mean())) < 0.2 and 0.8 < float(x.std()) < 1.2  # normalised
    assert read_idx(DEBIAN_FASHION_MNIST / "t10k-labels-idx1-ubyte.gz").shape == (10000,)


@pytest.mark.parametrize("name", ["mnist", "cifar10", "fashion_mnist"])
def test_missing_data_says_where_and_how(name, no_default_data, tmp_path):
    root = tmp_path / "empty-root"
    with pytest.raises(DatasetNotFoundError) as error:
        build_task(name, data_root=str(root), download=False).setup("cpu")
    message = str(error.value)
    assert "\n" not in message and str(root) in message and "download=true" in message
    assert isinstance(error.value, FileNotFoundError)
    if name == "fashion_mnist":
        assert "apt-get install dataset-fashion-mnist" in message
    with pytest.raises(DatasetNotFoundError) as error:  # without data_root: the default root
        build_task(name, download=False).setup("cpu")
    assert "cache" in str(error.value)
    if name == "fashion_mnist":
        assert str(no_default_data / "debian") in str(error.value)


def test_failed_download_is_a_dataset_error(no_default_data, tmp_path, monkeypatch):
    def offline(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", offline)
    with pytest.raises(DatasetNotFoundError, match="download into .*failed.*Error downloading") as error:
        build_task("mnist", data_root=str(tmp_path / "root"), download=True).setup("cpu")
    assert "download=true" not in str(error.value)  # it was on: suggest what is left


def test_a_failed_download_gives_its_reason():
    from genlr.messages import one_line

    error = RuntimeError("Error downloading x.gz:\nTried https://a/, got:\n<urlopen error [Errno -2] "
                         "Name or service not known>\n")
    assert one_line(error) == ("Error downloading x.gz: Tried https://a/, got: <urlopen error "
                               "[Errno -2] Name or service not known>")


# ---------------------------------------------------------- every task, every model
def compatible_models(task) -> list[str]:
    names = []
    for name in MODELS:
        try:
            # shapes only (meta tensors: no memory, no init cost); coords copies real values
            with torch.device("meta") if name != "coords" else contextlib.nullcontext():
                build_model(name, task)
        except ValueError:
            continue
        names.append(name)
    return names


@pytest.fixture
def image_tasks(fake_mnist, fake_cifar10, fake_debian_fashion):
    tasks = [build_task("mnist", data_root=str(fake_mnist[0]), download=False),
             build_task("cifar10", data_root=str(fake_cifar10[0]), download=False),
             build_task("fashion_mnist", download=False)]
    for task in tasks:
        task.setup("cpu")
    return tasks


def test_loss_finite_and_differentiable_with_every_compatible_model(image_tasks):
    expected = {"mnist": {"mlp", "linear", "cnn", "resnet18", "vit"},
                "cifar10": {"mlp", "linear", "cnn", "resnet18", "vit"},
                "fashion_mnist": {"mlp", "linear", "cnn", "resnet18", "vit"},
                "quadratic": {"coords"}, "rosenbrock": {"coords"}, "beale": {"coords"},
                "logreg": {"mlp", "linear"}, "teacher": {"mlp", "linear"}, "charlm": {"gpt"}}
    tasks = image_tasks + [synthetic(name) for name in SYNTHETIC]
    tasks.append(build_task("charlm", max_chars=20_000, block_size=16))
    tasks[-1].setup("cpu")
    assert {t.name for t in tasks} == set(TASKS)
    for task in tasks:
        names = compatible_models(task)
        assert set(names) == expected[task.name], task.name
        assert task.default_model in names
        for name in names:
            if name == "resnet18":
                continue  # seconds per step on 2 CPU cores; test_models trains it once
            torch.manual_seed(0)
            small = {"vit": {"depth": 1, "dim": 32}, "gpt": {"depth": 1, "width": 32}}
            model = build_model(name, task, **small.get(name, {}))
            batch = next(task.train_batches(2, epoch=0, seed=0))
            loss = task.loss(model, batch)
            assert loss.ndim == 0 and torch.isfinite(loss), (task.name, name)
            loss.backward()
            grads = [p.grad for p in model.parameters()]
            assert all(g is not None and torch.isfinite(g).all() for g in grads), (task.name, name)
            metrics = task.evaluate(model, next(task.eval_batches(2)))
            assert {"loss_sum", "count"} <= set(metrics)
            assert ("correct" in metrics) == task.classification
            assert torch.isfinite(metrics["loss_sum"])


# --------------------------------------------------------------------------- configs
def _register_schemas():
    """What the CLI does (gen_cli/schema.py), kept local so this test needs only this group."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for group, registry in (("task", TASKS), ("model", MODELS)):
        for name, builder in registry.items():
            fields = [("name", str, dataclasses.field(default=name))]
            for option in options_of(builder):
                default = option.default
                spec = (dataclasses.field(default_factory=lambda d=default: list(d))
                        if isinstance(default, list) else dataclasses.field(default=default))
                fields.append((option.name, option.type, spec))
            store.store(group=f"schema/{group}", name=name,
                        node=dataclasses.make_dataclass(f"Test{group}{name}", fields))


def test_every_task_and_model_has_a_config():
    for group, registry in (("task", TASKS), ("model", MODELS)):
        for name in registry:
            text = (REPO / "conf" / group / f"{name}.yaml").read_text()
            assert f"/schema/{group}/{name}@_here_" in text and f"name: {name}" in text


def test_configs_compose_and_pick_the_task_default_model(tmp_path):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    _register_schemas()
    for group in ("task", "model"):
        shutil.copytree(REPO / "conf" / group, tmp_path / group)
    # `model` before `task`: Hydra expands a defaults list back to front, so the task's
    # `override /model` only reaches a model entry listed before it.
    (tmp_path / "primary.yaml").write_text("defaults:\n  - model: cnn\n  - task: fashion_mnist\n  - _self_\n")
    with initialize_config_dir(str(tmp_path), version_base="1.3"):
        for name, cls in TASKS.items():
            cfg = compose("primary", overrides=[f"task={name}"])
            options = OmegaConf.to_container(cfg.task)
            assert options.pop("name") == name
            assert options == {o.name: o.default for o in options_of(cls)}
            assert cfg.model.name == cls.default_model  # the task's YAML picks it
        cfg = compose("primary", overrides=["task=quadratic", "model=mlp", "task.condition=1000"])
        assert cfg.model.name == "mlp" and cfg.task.condition == 1000.0  # the command line wins
        cfg = compose("primary", overrides=["model=vit", "model.depth=2"])
        assert cfg.model.depth == 2
        with pytest.raises(Exception, match="nonexistent"):
            compose("primary", overrides=["task=quadratic", "task.nonexistent=1"])


def test_tasks_tell_their_training_set_size_before_loading(fake_mnist, fake_debian_fashion,
                                                         fake_cifar10, tmp_path, monkeypatch):
    """What lets gen-train refuse trainer.batch_size before the data loads: the options, or
    the labels' IDX header (a few bytes), or CIFAR-10's fixed size once its files are there."""
    root = fake_mnist[0]
    monkeypatch.setenv("GENLR_DATA", str(tmp_path / "empty-cache"))
    monkeypatch.setattr("genlr.tasks.images.read_idx", lambda path: pytest.fail(f"read {path}"))
    assert build_task("mnist", data_root=str(root)).train_examples() == FAKE_TRAIN
    assert build_task("mnist", data_root=str(root), train_size=10).train_examples() == 10
    assert build_task("fashion_mnist").train_examples() == FAKE_TRAIN  # the Debian copy (.gz)
    assert build_task("mnist", data_root=str(tmp_path / "none")).train_examples() is None
    assert build_task("cifar10", data_root=str(root)).train_examples() == 50_000
    assert build_task("logreg", train_samples=300).train_examples() == 300
    assert build_task("teacher", train_samples=200).train_examples() == 200
    assert build_task("quadratic").train_examples() is None  # no data: any batch size
    text = tmp_path / "text.txt"
    text.write_text("abcdefgh" * 100)  # 800 characters, 720 to train on: (720 - 1) // 8
    assert build_task("charlm", path=str(text), block_size=8).train_examples() == 89
    with pytest.raises(ValueError, match=r"^trainer.batch_size=90: task charlm has 89 training "
                                         r"windows of block_size \+ 1 = 9 characters; choose at most 89$"):
        build_task("charlm", path=str(text), block_size=8).check_batch_size(90)
