"""Small image classification data sets: Fashion-MNIST, MNIST, CIFAR-10.

Each is read through torchvision's own dataset class (so the on-disk layout is the one
torchvision writes when it downloads), then held on the device as uint8 (see
``in_memory.py``). Fashion-MNIST is also read from the Debian package
``dataset-fashion-mnist`` (flat gzipped IDX files), which works offline.

Where the data is looked for, in order:

1. ``data_root`` when given (torchvision layout, e.g. ``<root>/MNIST/raw/``);
2. for Fashion-MNIST, ``/usr/share/datasets/fashion-mnist/``;
3. the default root, ``$GENLR_DATA`` or ``~/.cache/genlr``, when ``data_root`` is not given;
4. a torchvision download into ``data_root`` (or the default root), when ``download=true``.

If all fail, :class:`DatasetNotFoundError` says where it looked and how to get the data.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torchvision

from genlr.tasks.base import DatasetNotFoundError
from genlr.tasks.in_memory import InMemoryTask

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

# The IDX element types (LeCun's format: magic = 0, 0, type, ndim), big-endian.
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def default_data_root() -> Path:
    """Where data is cached when ``data_root`` is not set: ``$GENLR_DATA`` or ``~/.cache/genlr``."""
    return Path(os.environ.get("GENLR_DATA") or Path.home() / ".cache" / "genlr")


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
        data_root: where the torchvision-layout data is (default: ``$GENLR_DATA`` or
            ``~/.cache/genlr``).
        download: let torchvision download the data when it is not found.
        train_size: use only the first N training examples (quick experiments); None: all.
    """

    classification = True
    default_model = "cnn"
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    augment = False
    #: the torchvision class and the folder it reads (for messages)
    dataset_class: type = torchvision.datasets.MNIST
    hint: str = ""

    def __init__(self, *, data_root: Optional[str] = None, download: bool = True,
                 train_size: Optional[int] = None) -> None:
        super().__init__()
        self.data_root = data_root
        self.download = download
        self.train_limit = train_size

    # --------------------------------------------------------------------- loading
    def load(self):
        train, test = self.find()
        if self.train_limit is not None:
            train = (train[0][:self.train_limit], train[1][:self.train_limit])
        return train, test

    def find(self):
        """Both splits as ``(images uint8 NCHW, labels int64)``, from the first place that has them."""
        looked: list[str] = []
        for root in self._roots():
            found = self._from_torchvision(root, download=False)
            looked.append(self._layout(root))
            if found is not None:
                return found
        extra = self._extra_sources(looked)
        if extra is not None:
            return extra
        root = Path(self.data_root) if self.data_root else default_data_root()
        if self.download:
            try:
                return self._from_torchvision(root, download=True)
            except Exception as error:  # the download's many failure types: network, md5, disk
                raise DatasetNotFoundError(
                    f"{self.name}: not found in {', '.join(looked)} and the download into {root} "
                    f"failed ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
                    f"{self._how_to_get()}") from error
        raise DatasetNotFoundError(f"{self.name}: not found in {', '.join(looked)}; {self._how_to_get()}")

    def _roots(self) -> list[Path]:
        return [Path(self.data_root)] if self.data_root else [default_data_root()]

    def _extra_sources(self, looked: list[str]):
        return None

    def _layout(self, root: Path) -> str:
        return str(root / self.dataset_class.__name__ / "raw")

    def _how_to_get(self) -> str:
        return (f"{self.hint}set task.data_root=DIR to a folder holding it in torchvision's "
                f"layout, or task.download=true to download it")

    def _from_torchvision(self, root: Path, download: bool):
        try:
            train = self.dataset_class(str(root), train=True, download=download)
            test = self.dataset_class(str(root), train=False, download=download)
        except RuntimeError as error:
            if download:
                raise
            layout = Path(self._layout(root))
            if layout.is_dir() and any(layout.iterdir()):
                raise self._corrupt(layout, error) from error
            return None  # torchvision's "Dataset not found or corrupted"
        return self._tensors(train), self._tensors(test)

    def _corrupt(self, where: Path, error: BaseException) -> DatasetNotFoundError:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        return DatasetNotFoundError(
            f"{self.name}: the files in {where} are truncated or corrupt ({reason}); delete them "
            f"and {self._how_to_get()}")

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

    Besides torchvision's layout, reads the Debian package ``dataset-fashion-mnist``
    (``/usr/share/datasets/fashion-mnist/*-ubyte.gz``), so it works without network.
    """

    name = "fashion_mnist"
    input_shape = (1, 28, 28)
    num_outputs = 10
    mean = (0.2860,)
    std = (0.3530,)
    dataset_class = torchvision.datasets.FashionMNIST
    hint = "install it with `apt-get install dataset-fashion-mnist`, or "

    def __init__(self, *, data_root: Optional[str] = None, download: bool = True,
                 train_size: Optional[int] = None) -> None:
        super().__init__(data_root=data_root, download=download, train_size=train_size)

    def _roots(self) -> list[Path]:
        # An explicit data_root comes first, then the Debian package, then the cache.
        return [Path(self.data_root)] if self.data_root else []

    def _extra_sources(self, looked: list[str]):
        debian = Path(DEBIAN_FASHION_MNIST)
        looked.append(str(debian))
        files = [debian / f"{prefix}-{kind}-idx{dim}-ubyte.gz"
                 for prefix in ("train", "t10k") for kind, dim in (("images", 3), ("labels", 1))]
        if all(f.is_file() for f in files):
            try:
                images, labels, test_images, test_labels = (read_idx(f) for f in files)
            except (OSError, EOFError, ValueError, struct.error) as error:
                raise self._corrupt(debian, error) from error
            return ((images.unsqueeze(1), labels.long()), (test_images.unsqueeze(1), test_labels.long()))
        if not self.data_root:
            root = default_data_root()
            looked.append(self._layout(root))
            return self._from_torchvision(root, download=False)
        return None


class MNIST(ImageClassification):
    """MNIST (LeCun et al., 1998): 60k/10k 28x28 grey digits, 10 classes."""

    name = "mnist"
    input_shape = (1, 28, 28)
    num_outputs = 10
    mean = (0.1307,)
    std = (0.3081,)
    dataset_class = torchvision.datasets.MNIST

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
    dataset_class = torchvision.datasets.CIFAR10

    def __init__(self, *, data_root: Optional[str] = None, download: bool = True,
                 train_size: Optional[int] = None, augment: bool = False) -> None:
        super().__init__(data_root=data_root, download=download, train_size=train_size)
        self.augment = augment

    def _layout(self, root: Path) -> str:
        return str(root / self.dataset_class.base_folder)
