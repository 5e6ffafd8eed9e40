"""Small image classification data sets: Fashion-MNIST, MNIST, CIFAR-10.

Each is read through torchvision's own dataset class (so the on-disk layout is the one
torchvision writes when it downloads), then held on the device as uint8 (see
``in_memory.py``). Fashion-MNIST is also read from the Debian package
``dataset-fashion-mnist`` (flat gzipped IDX files), which works offline.

Where the data is looked for:

- ``data_root`` when it is given (torchvision's layout, e.g. ``<root>/MNIST/raw/``), and
  nowhere else: a folder the user names is never silently replaced by another copy;
- otherwise, for Fashion-MNIST, ``/usr/share/datasets/fashion-mnist/``, then the default
  root, ``$GENLR_DATA`` or ``~/.cache/genlr``.

When none has it and ``download=true``, torchvision downloads it into ``data_root`` (or the
default root). ``prepare_data()`` does the looking and downloading without reading the data
(gen-train calls it before a run starts); if it fails, :class:`DatasetNotFoundError` says
in one line where it looked and how to get the data.
"""

from __future__ import annotations

import gzip
import logging
import os
import struct
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from genlr.messages import one_line
from genlr.options import SettingError
from genlr.tasks.base import DatasetNotFoundError
from genlr.tasks.in_memory import InMemoryTask

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

# The IDX element types (LeCun's format: magic = 0, 0, type, ndim), big-endian.
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


log = logging.getLogger(__name__)
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte")
Splits = tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def default_data_root() -> Path:
    """Where data is cached when ``data_root`` is not set: ``$GENLR_DATA`` or ``~/.cache/genlr``."""
    return Path(os.environ.get("GENLR_DATA") or Path.home() / ".cache" / "genlr")


def idx_shape(path: str | os.PathLike) -> tuple[int, ...]:
    """The shape an IDX file declares in its header (a few bytes read, gzipped or not)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        zero, dtype_code, ndim = struct.unpack(">HBB", f.read(4))
        if zero != 0 or dtype_code not in _IDX_DTYPES:
            raise ValueError(f"{path} is not an IDX file")
        return struct.unpack(f">{ndim}I", f.read(4 * ndim))


def read_idx(path: str | os.PathLike) -> torch.Tensor:
    """Read an IDX file (gzipped when the name ends in ``.gz``) into a tensor."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file")
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    array = np.frombuffer(raw, dtype=_IDX_DTYPES[dtype_code], offset=4 + 4 * ndim)
    return torch.from_numpy(array.astype(array.dtype.newbyteorder("="), copy=True).reshape(shape))


class ImageClassification(InMemoryTask):
    """Shared behaviour: uint8 NCHW images, per-channel normalisation, optional augmentation.

    Options common to every image task:
        data_root: the folder holding the data in torchvision's layout (default:
            ``$GENLR_DATA`` or ``~/.cache/genlr``); when given, the only place looked in.
        download: let torchvision download the data when it is not found.
        train_size: use only the first N training examples (quick experiments); None: all.
    """

    classification = True
    default_model = "cnn"
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    augment = False
    #: the torchvision.datasets class that reads (and downloads) the data, its folder under
    #: the root and the files it holds there (torchvision's own names)
    torchvision_class: str = "MNIST"
    folder: str = "MNIST/raw"
    files: tuple[str, ...] = MNIST_FILES
    hint: str = ""

    def __init__(self, *, data_root: Optional[str] = None, download: bool = True,
                 train_size: Optional[int] = None) -> None:
        super().__init__()
        if data_root is not None and not data_root.strip():
            raise SettingError(f"task.data_root={data_root!r}: no folder; give the folder that "
                             f"holds the data, or null for the default ({default_data_root()})")
        if train_size is not None and train_size < 1:
            raise ValueError(f"train_size must be a positive number of examples (or null for "
                             f"all of them), got {train_size}")
        self.data_root = data_root
        self.download = download
        self.train_limit = train_size

    # --------------------------------------------------------------------- loading
    def sources(self) -> list[tuple[str, Callable[[], bool], Callable[[], Splits]]]:
        """``(where, is_there, read)`` for each place the data may be, in the order tried."""
        root = self.root()
        return [(str(root / self.folder), lambda: self._has_files(root / self.folder),
                 lambda: self._from_torchvision(root, download=False))]

    def root(self) -> Path:
        """The torchvision root: data_root, else the default root (also where downloads go)."""
        return Path(self.data_root) if self.data_root else default_data_root()

    def prepare_data(self) -> None:
        """Make sure the data is on disk (downloading it if allowed), without reading it.
        Where ``data_root`` is given, the refusal leads with it (the setting to change)."""
        given = f"task.data_root={self.data_root}: " if self.data_root else f"{self.name}: "
        if self.data_root and Path(self.data_root).exists() and not Path(self.data_root).is_dir():
            raise DatasetNotFoundError(f"{given}it is a file; give the folder that holds the "
                                       f"{self.name} data")
        sources = self.sources()
        if any(is_there() for _, is_there, _ in sources):
            return
        looked = ", ".join(where for where, _, _ in sources)
        missing = (f"no {self.name} data there ({self.folder}/)" if self.data_root
                   else f"not found in {looked}")
        if not self.download:
            raise DatasetNotFoundError(f"{given}{missing}; {self._how_to_get()}")
        log.info("%s: not found in %s; downloading it into %s", self.name, looked, self.root())
        made = _missing_ancestor(self.root())
        try:
            self._from_torchvision(self.root(), download=True)
        except Exception as error:  # the download's many failure types: network, md5, disk
            _remove_empty(self.root() / self.folder, up_to=made)  # what the try left behind
            into = " into it" if self.data_root else f" into {self.root()}"
            raise DatasetNotFoundError(
                f"{given}{missing}, and the download{into} failed "
                f"({one_line(error, limit=120)}); {self._how_to_get(downloaded=True)}") from error

    def load(self) -> Splits:
        self.prepare_data()
        where, _, read = next(source for source in self.sources() if source[1]())
        log.info("%s: reading %s", self.name, where)
        train, test = read()
        if self.train_limit is not None:
            train = (train[0][:self.train_limit], train[1][:self.train_limit])
        return train, test

    def examples_before_loading(self) -> int | None:
        """The size the training labels' IDX header declares, in the first place the data is
        found (at most ``train_size``); None before it is there."""
        where = next((Path(w) for w, is_there, _ in self.sources() if is_there()), None)
        labels = [where / f"{self.files[1]}{suffix}" for suffix in ("", ".gz")] if where else []
        try:
            count = next(idx_shape(f)[0] for f in labels if f.is_file())
        except (StopIteration, OSError, EOFError, ValueError, struct.error):
            return None  # not there yet, or unreadable: loading says why
        return min(count, self.train_limit) if self.train_limit else count

    def _has_files(self, folder: Path) -> bool:
        return all((folder / name).is_file() for name in self.files)

    def _how_to_get(self, downloaded: bool = False) -> str:
        if self.data_root:
            return self.hint + ("put the files there (torchvision's layout), or check the "
                                "network" if downloaded else "put the files there (torchvision's "
                                "layout), or set task.download=true to download them")
        layout = f"torchvision's layout (DIR/{self.folder}/)"
        where = (f"put it in {layout} into task.data_root=DIR" if downloaded else
                 f"set task.data_root=DIR to a folder holding it in {layout}, or "
                 "task.download=true to download it")
        return f"{self.hint}{where}"

    def _from_torchvision(self, root: Path, download: bool) -> Splits:
        import torchvision  # only here: importing it takes seconds

        dataset_class = getattr(torchvision.datasets, self.torchvision_class)
        try:
            train = dataset_class(str(root), train=True, download=download)
            test = dataset_class(str(root), train=False, download=download)
        except RuntimeError as error:
            if download:
                raise
            raise self._corrupt(root / self.folder, error) from error
        return self._tensors(train), self._tensors(test)

    def _corrupt(self, where: Path, error: BaseException) -> DatasetNotFoundError:
        return DatasetNotFoundError(
            f"{self.name}: the files in {where} are truncated or corrupt ({one_line(error)}); "
            f"delete them and {self._how_to_get()}")

    def _tensors(self, dataset) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.as_tensor(dataset.data)
        images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
        return images.contiguous(), torch.as_tensor(dataset.targets, dtype=torch.long)

    # --------------------------------------------------------------- per batch
    def prepare(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.augment and generator is not None:
            x = random_crop_flip(x, generator)
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x.float().div_(255) - mean) / std


def _missing_ancestor(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (None: ``path`` exists)."""
    path, missing = Path(path).absolute(), None
    while not path.exists():
        path, missing = path.parent, path
    return missing


def _remove_empty(folder: Path, up_to: Path | None) -> None:
    """Remove ``folder`` and its parents up to ``up_to`` where empty: the folders a failed
    download made (torchvision makes them before it fetches a byte)."""
    if up_to is None:
        return
    folder, up_to = Path(folder).absolute(), Path(up_to).absolute()
    for path in [folder, *folder.parents]:
        try:
            path.rmdir()
        except OSError:
            return
        if path == up_to:
            return


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """The standard CIFAR augmentation (pad-4 random crop, horizontal flip), batched on device.

    Draws come from ``generator`` (CPU) so that a batch is augmented the same way on any device.
    """
    n, c, h, w = x.shape
    dy, dx = torch.randint(0, 2 * pad + 1, (2, n), generator=generator).to(x.device)
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = dx[:, None] + torch.arange(w, device=x.device)
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, None, :]
    return padded[torch.arange(n, device=x.device)[:, None, None, None],
                  torch.arange(c, device=x.device)[None, :, None, None], rows, cols]


class FashionMNIST(ImageClassification):
    """Fashion-MNIST (Xiao, Rasul & Vollgraf, 2017): 60k/10k 28x28 grey images, 10 classes.

    Without ``data_root``, also reads the Debian package ``dataset-fashion-mnist``
    (``/usr/share/datasets/fashion-mnist/*-ubyte.gz``), first, so it works without network.
    """

    name = "fashion_mnist"
    input_shape = (1, 28, 28)
    num_outputs = 10
    mean = (0.2860,)
    std = (0.3530,)
    torchvision_class = "FashionMNIST"
    folder = "FashionMNIST/raw"
    hint = ("install Debian's copy (`apt-get install dataset-fashion-mnist`) and leave "
            "task.data_root unset, or ")

    def __init__(self, *, data_root: Optional[str] = None, download: bool = True,
                 train_size: Optional[int] = None) -> None:
        super().__init__(data_root=data_root, download=download, train_size=train_size)

    def sources(self):
        if self.data_root:
            return super().sources()
        debian = Path(DEBIAN_FASHION_MNIST)
        files = [debian / f"{name}.gz" for name in self.files]
        return [(str(debian), lambda: all(f.is_file() for f in files),
                 lambda: self._from_debian(debian, files)), *super().sources()]

    def _from_debian(self, debian: Path, files: list[Path]) -> Splits:
        try:
            images, labels, test_images, test_labels = (read_idx(f) for f in files)
        except (OSError, EOFError, ValueError, struct.error) as error:
            raise self._corrupt(debian, error) from error
        return (images.unsqueeze(1), labels.long()), (test_images.unsqueeze(1), test_labels.long())


class MNIST(ImageClassification):
    """MNIST (LeCun et al., 1998): 60k/10k 28x28 grey digits, 10 classes."""

    name = "mnist"
    input_shape = (1, 28, 28)
    num_outputs = 10
    mean = (0.1307,)
    std = (0.3081,)

    def __init__(self, *, data_root: Optional[str] = None, download: bool = True,
                 train_size: Optional[int] = None) -> None:
        super().__init__(data_root=data_root, download=download, train_size=train_size)


class CIFAR10(ImageClassification):
    """CIFAR-10 (Krizhevsky, 2009): 50k/10k 32x32 colour images, 10 classes.

    Options:
        augment: pad-4 random crop and horizontal flip on training batches (on device,
            deterministic in seed, epoch and batch index).
    """

    name = "cifar10"
    input_shape = (3, 32, 32)
    num_outputs = 10
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    torchvision_class = "CIFAR10"
    folder = "cifar-10-batches-py"
    files = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")

    def __init__(self, *, data_root: Optional[str] = None, download: bool = True,
                 train_size: Optional[int] = None, augment: bool = False) -> None:
        super().__init__(data_root=data_root, download=download, train_size=train_size)
        self.augment = augment

    def examples_before_loading(self) -> int | None:
        """50000 once the files are there: torchvision reads only files with the real set's
        checksums (counting them would mean unpickling 150 MB)."""
        if not any(is_there() for _, is_there, _ in self.sources()):
            return None
        return min(50_000, self.train_limit or 50_000)
