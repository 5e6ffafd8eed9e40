"""Character-level language modelling on a text every machine has offline.

The default corpus is the running Python's own standard-library sources (the ``.py`` files
at the top of its ``stdlib`` folder, in name order): real text, tens of megabytes on any
machine, no download; ``corpus="python_docs"`` takes English prose instead, the Python
reference manual that ``pydoc`` shows (``pydoc_data.topics``, also in every Python).
Results are comparable between machines with the same Python version; any other UTF-8
text comes in through ``path``.
"""

from __future__ import annotations

import codecs
import math
import sysconfig
from pathlib import Path
from typing import Iterator, Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from genlr.options import SettingError
from genlr.tasks.base import Batch, DatasetNotFoundError, Task, epoch_generator


def stdlib_text(max_chars: int) -> str:
    """The first ``max_chars`` characters of the standard library's top-level modules."""
    folder = Path(sysconfig.get_paths()["stdlib"])
    parts, total = [], 0
    for file in sorted(folder.glob("*.py")):
        text = file.read_text(encoding="utf-8", errors="replace")
        parts.append(text)
        total += len(text)
        if total >= max_chars:
            break
    if not parts:
        raise DatasetNotFoundError(f"task charlm: no Python sources in {folder}; give a text "
                                   f"file with task.path=FILE")
    return "".join(parts)[:max_chars]


def python_docs_text(max_chars: int) -> str:
    """The first ``max_chars`` characters of the reference manual's topics, by name."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[name] for name in sorted(topics))[:max_chars]


def read_text(path: str, max_chars: int) -> str:
    """The first ``max_chars`` characters of the UTF-8 text file ``path``; ValueError (one
    line) for a file that is not UTF-8 text, a binary file among them."""
    limit = 4 * max_chars  # bytes: UTF-8 takes at most 4 a character
    with open(path, "rb") as f:
        data = f.read(limit)
    try:  # a character cut at the end of what was read is not an error
        text = codecs.getincrementaldecoder("utf-8")().decode(data, final=len(data) < limit)
    except UnicodeDecodeError as err:
        raise SettingError(f"task.path={path}: not UTF-8 text (byte {err.start}: {err.reason}); "
                         "give a text file") from None
    if "\x00" in text:
        raise SettingError(f"task.path={path}: a binary file (it holds NUL characters); give a "
                         "text file")
    return text[:max_chars]


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """Logits in float32 for the loss under a half-precision autocast; float64 stays."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class CharLM(Task):
    """Predict every next character of a text (a causal language model's training loss).

    The text is split once: the first ``1 - eval_fraction`` for training, the rest for
    evaluation. A batch is ``(x, y)``, two ``(batch, block_size)`` tensors of character ids,
    ``y`` being ``x`` shifted by one. An epoch visits every non-overlapping window of
    ``block_size + 1`` characters of the training text once, in an order and at an offset
    drawn from ``(seed, epoch)``. The loss is the mean cross entropy per character (nats);
    evaluation reports it, bits per character (``bpc``) and next-character accuracy.

    Options:
        corpus: the text without ``path``: "stdlib" (this Python's standard-library
            sources) or "python_docs" (its reference manual's prose, 465k characters).
        path: a UTF-8 text file instead of ``corpus``.
        max_chars: characters of the text used (the first ones).
        block_size: context length of the model.
        eval_fraction: share of the text held out for evaluation.
    """

    name = "charlm"
    classification = True
    tokens = True
    default_model = "gpt"

    def __init__(self, *, corpus: Literal["stdlib", "python_docs"] = "stdlib",
                 path: Optional[str] = None, max_chars: int = 2_000_000,
                 block_size: int = 64, eval_fraction: float = 0.1) -> None:
        if max_chars < 1:
            raise ValueError(f"max_chars must be positive, got {max_chars}")
        if block_size < 1:
            raise ValueError(f"block_size must be positive, got {block_size}")
        if not 0.0 < eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
        if path is not None and corpus != "stdlib":
            raise SettingError(f"task.corpus={corpus}: read only without task.path (the text "
                             f"is {path})")
        if path is not None and not Path(path).is_file():
            raise DatasetNotFoundError(f"task charlm: task.path={path} is not a file")
        self.corpus, self.path, self.max_chars = corpus, path, max_chars
        self.block_size = block_size
        self.eval_fraction = eval_fraction
        self.input_shape = (block_size,)
        self._chars: list[str] | None = None
        self._ids: torch.Tensor | None = None
        self._split = 0

    # ---------------------------------------------------------------------- the text
    def _text(self) -> str:
        if self.path is None:
            return (stdlib_text if self.corpus == "stdlib" else python_docs_text)(self.max_chars)
        return read_text(self.path, self.max_chars)

    def prepare_data(self) -> None:
        """A text given as ``path`` is read (and refused if it is not UTF-8 text) before a
        run starts."""
        if self.path is not None:
            read_text(self.path, self.max_chars)

    @property
    def chars(self) -> list[str]:
        """The alphabet: every character of the text, sorted (id = position)."""
        if self._chars is None:
            self._encode()
        return self._chars  # type: ignore[return-value]

    @property
    def num_outputs(self) -> int:  # type: ignore[override]
        return len(self.chars)

    def _encode(self) -> None:
        text = self._text()
        self._chars = sorted(set(text))
        index = {c: i for i, c in enumerate(self._chars)}
        self._ids = torch.tensor([index[c] for c in text], dtype=torch.int64)
        self._split = int(len(text) * (1 - self.eval_fraction))
        for part, size in (("training", self._split), ("evaluation", len(text) - self._split)):
            if size < self.block_size + 1:
                raise ValueError(f"task charlm: the {part} text has {size} characters, fewer "
                                 f"than block_size + 1 = {self.block_size + 1}")

    def decode(self, ids: torch.Tensor) -> str:
        return "".join(self.chars[i] for i in ids.tolist())

    # ------------------------------------------------------------------- Task protocol
    def setup(self, device: torch.device | str = "cpu") -> None:
        if self._ids is None:
            self._encode()
        self._ids = self._ids.to(device)  # type: ignore[union-attr]

    def _windows(self, split: str) -> torch.Tensor:
        if self._ids is None:
            raise RuntimeError("task 'charlm': call setup(device) before asking for batches")
        return self._ids[:self._split] if split == "train" else self._ids[self._split:]

    def train_examples(self) -> int:
        # before loading, from the text's length alone (reading it takes a blink; encoding
        # it, seconds)
        length = len(self._ids) if self._ids is not None else len(self._text())
        return max(0, (int(length * (1 - self.eval_fraction)) - 1) // self.block_size)

    @property
    def examples_are(self) -> str:
        return f"windows of block_size + 1 = {self.block_size + 1} characters"

    def steps_per_epoch(self, batch_size: int) -> int:
        self.check_batch_size(batch_size)
        return self.train_examples() // batch_size

    def train_batches(self, batch_size: int, epoch: int, seed: int, start: int = 0) -> Iterator[Batch]:
        ids = self._windows("train")
        generator = epoch_generator(seed, epoch)
        offset = int(torch.randint(0, self.block_size, (), generator=generator))
        count = (len(ids) - 1 - offset) // self.block_size
        starts = offset + self.block_size * torch.randperm(count, generator=generator)
        span = torch.arange(self.block_size + 1)
        for i in range(start, self.steps_per_epoch(batch_size)):
            chosen = starts[i * batch_size:(i + 1) * batch_size]
            windows = ids[(chosen[:, None] + span).to(ids.device)]
            yield windows[:, :-1], windows[:, 1:]

    def eval_batches(self, batch_size: int) -> Iterator[Batch]:
        ids = self._windows("eval")
        count = (len(ids) - 1) // self.block_size
        span = torch.arange(self.block_size + 1, device=ids.device)
        for i in range(0, count, batch_size):
            chosen = torch.arange(i, min(i + batch_size, count), device=ids.device) * self.block_size
            windows = ids[chosen[:, None] + span]
            yield windows[:, :-1], windows[:, 1:]

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        x, y = batch
        logits = at_least_float32(model(x))
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        x, y = batch
        logits = at_least_float32(model(x))
        loss_sum = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                   reduction="sum")
        return {"loss_sum": loss_sum, "bpc_sum": loss_sum / math.log(2),
                "count": torch.tensor(y.numel(), device=y.device),
                "correct": (logits.argmax(dim=-1) == y).sum()}
