"""Shared fixtures. Fake data sets are written in the real on-disk formats (IDX for the
MNIST family, CIFAR-10's python pickles), small, into a tmp dir, so the real torchvision
classes read them and no test needs the network."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

FAKE_TRAIN, FAKE_TEST = 64, 20

# Under pytest-xdist (``-n auto``) each worker, and each process it starts, gets its share
# of the cores: several workers' torch threads on the same cores wait on one another and
# run many times slower.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# Property-based tests: a few examples from a fixed seed in the default suite (the same
# every run), the full random search under ``-m slow``. Each example may run gen-train.
_PROPERTY = dict(deadline=None, suppress_health_check=list(HealthCheck))
settings.register_profile("fast", max_examples=25, derandomize=True, **_PROPERTY)
settings.register_profile("full", max_examples=150, **_PROPERTY)
settings.load_profile("fast")


@pytest.fixture(autouse=True)
def _taylor_pass_interpreted_unless_marked(request, monkeypatch):
    """Compiling each small model's jet with inductor costs the default suite minutes on 2
    cores: its tests run the Taylor pass interpreted (the same graph, checked the same way)
    unless marked ``compiled``; the slow and GPU sets run as users do, compiled."""
    if not any(request.node.get_closest_marker(m) for m in ("compiled", "slow", "gpu")):
        monkeypatch.setenv("GENLR_TAYLOR_COMPILE", "0")


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzipped when the name ends in .gz)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


def fake_mnist_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (FAKE_TRAIN, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, FAKE_TRAIN, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (FAKE_TEST, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, FAKE_TEST, dtype=np.uint8),
    }


def write_mnist_layout(root: Path, folder: str, seed: int = 0) -> dict[str, np.ndarray]:
    """torchvision's layout: ``<root>/<folder>/raw/<name>`` (uncompressed, as it extracts them)."""
    arrays = fake_mnist_arrays(seed)
    for name, array in arrays.items():
        write_idx(root / folder / "raw" / name, array)
    return arrays


@pytest.fixture
def fake_mnist(tmp_path) -> tuple[Path, dict[str, np.ndarray]]:
    """``(data_root, arrays)`` with fake MNIST in torchvision's layout."""
    return tmp_path, write_mnist_layout(tmp_path, "MNIST")


@pytest.fixture
def fake_fashion_root(tmp_path) -> tuple[Path, dict[str, np.ndarray]]:
    """``(data_root, arrays)`` with fake Fashion-MNIST in torchvision's layout."""
    return tmp_path, write_mnist_layout(tmp_path, "FashionMNIST", seed=1)


@pytest.fixture
def fake_debian_fashion(tmp_path, monkeypatch) -> tuple[Path, dict[str, np.ndarray]]:
    """Fake Fashion-MNIST laid out as the Debian package does (flat ``*.gz``), patched in."""
    folder = tmp_path / "debian-fashion-mnist"
    arrays = fake_mnist_arrays(seed=2)
    for name, array in arrays.items():
        write_idx(folder / f"{name}.gz", array)
    monkeypatch.setattr("genlr.tasks.images.DEBIAN_FASHION_MNIST", folder)
    return folder, arrays


@pytest.fixture
def no_default_data(tmp_path, monkeypatch) -> Path:
    """No Debian Fashion-MNIST and an empty default root, so only what a test writes exists."""
    empty = tmp_path / "nowhere"
    monkeypatch.setattr("genlr.tasks.images.DEBIAN_FASHION_MNIST", empty / "debian")
    monkeypatch.setenv("GENLR_DATA", str(empty / "cache"))
    return empty


@pytest.fixture
def fake_cifar10(tmp_path, monkeypatch) -> tuple[Path, dict[str, np.ndarray]]:
    """``(data_root, arrays)`` with fake CIFAR-10 pickles in ``cifar-10-batches-py``.

    torchvision checks every file's md5 against the real archive's; the class's lists are
    patched to the fake files' own md5s, so the integrity check still runs for real.
    """
    import torchvision

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(3)
    per_batch = FAKE_TRAIN // 5
    arrays = {"train_images": [], "train_labels": []}
    md5 = {}

    def dump(name: str, obj) -> None:
        with open(folder / name, "wb") as f:
            pickle.dump(obj, f)
        md5[name] = hashlib.md5((folder / name).read_bytes()).hexdigest()

    for i in range(1, 6):
        data = rng.integers(0, 256, (per_batch, 3 * 32 * 32), dtype=np.uint8)  # rows: R plane, G, B
        labels = rng.integers(0, 10, per_batch).tolist()
        dump(f"data_batch_{i}", {"data": data, "labels": labels})
        arrays["train_images"].append(data)
        arrays["train_labels"] += labels
    test = rng.integers(0, 256, (FAKE_TEST, 3 * 32 * 32), dtype=np.uint8)
    test_labels = rng.integers(0, 10, FAKE_TEST).tolist()
    dump("test_batch", {"data": test, "labels": test_labels})
    dump("batches.meta", {"label_names": [f"class{i}" for i in range(10)]})

    cls = torchvision.datasets.CIFAR10
    monkeypatch.setattr(cls, "train_list", [[f"data_batch_{i}", md5[f"data_batch_{i}"]] for i in range(1, 6)])
    monkeypatch.setattr(cls, "test_list", [["test_batch", md5["test_batch"]]])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5["batches.meta"]})
    return tmp_path, {
        "train_images": np.concatenate(arrays["train_images"]).reshape(-1, 3, 32, 32),
        "train_labels": np.array(arrays["train_labels"]),
        "test_images": test.reshape(-1, 3, 32, 32),
        "test_labels": np.array(test_labels),
    }


def chosen_marker_column(image: np.ndarray) -> float | None:
    """Where a line-profile image (RGB array) draws the chosen step: the mean pixel column
    (x, from the left) of the vertical runs of the marker's colour taller than half the
    image; None if there are none."""
    from matplotlib.colors import to_rgb

    from genlr.tracking.tensorboard import CHOSEN_COLOR

    colour = np.array(to_rgb(CHOSEN_COLOR)) * 255
    hits = np.abs(image[..., :3].astype(float) - colour).max(axis=-1) < 8
    columns = np.flatnonzero(hits.sum(axis=0) > image.shape[0] / 2)
    return float(columns.mean()) + 0.5 if columns.size else None  # pixel centres


def chosen_marker_expected(profile) -> float:
    """The pixel column at which ``line_profile_figure(profile)`` puts ``profile.chosen``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from genlr.tracking.tensorboard import line_profile_figure

    figure = line_profile_figure(profile)
    FigureCanvasAgg(figure).draw()
    return float(figure.axes[0].transData.transform((profile.chosen, 0.0))[0])
