"""Data-parallel training with PyTorch DDP, and what the LR methods need from it.

``torchrun --nproc_per_node=N gen-train trainer.strategy=ddp ...`` starts N processes; each
takes its slice of every global batch (``trainer.batch_size`` is the global size), DDP
averages the gradients, and rank 0 alone writes the run's outputs.

Every rank must pick the same learning rate. The scalars a method measures on its slice
(the training loss, probe losses, ``d^T H d``, lookahead inner products) are linear in the
per-example losses, so their mean over ranks is exactly the global-batch value:
``mean_over_ranks`` gives it, bit-for-bit the same on every rank.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def mean_over_ranks(*values: float | torch.Tensor) -> list[float]:
    """The mean of each scalar across ranks (one all-reduce for all of them)."""
    if not is_distributed():
        return [float(v) for v in values]
    flat = torch.stack([torch.as_tensor(v, dtype=torch.float64).detach().reshape(()).cpu()
                        for v in values])
    if dist.get_backend() == "nccl":
        flat = flat.cuda()
    dist.all_reduce(flat)
    return (flat / dist.get_world_size()).tolist()


def any_rank(flag: bool) -> bool:
    """True on every rank if ``flag`` is True on any (stop requests, divergence)."""
    if not is_distributed():
        return flag
    value = torch.tensor([float(flag)], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def check(strategy: str, batch_size: int) -> None:
    """Refuse, in one line, a DDP run that cannot start: not under torchrun, or a global
    batch that does not split evenly across its processes."""
    if strategy == "single":
        return
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise ValueError("trainer.strategy=ddp needs torchrun: "
                         "torchrun --nproc_per_node=N $(which gen-train) trainer.strategy=ddp ...")
    world = int(os.environ["WORLD_SIZE"])
    if batch_size % world:
        raise ValueError(f"trainer.batch_size={batch_size}: the global batch is split across "
                         f"the {world} processes; choose a multiple of {world}")


def init(strategy: str, device_name: str, batch_size: int) -> torch.device | None:
    """Join the process group torchrun describes; return this rank's device (None: single)."""
    check(strategy, batch_size)
    if strategy == "single":
        return None
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def shard(batch: Any) -> Any:
    """This rank's contiguous slice of every tensor in ``batch`` (others pass through)."""
    if not is_distributed():
        return batch
    r, n = rank(), world_size()

    def cut(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            if len(value) % n:
                raise ValueError(f"trainer.batch_size ({len(value)}) must be divisible by the "
                                 f"{n} DDP processes")
            size = len(value) // n
            return value[r * size:(r + 1) * size]
        if isinstance(value, (tuple, list)):
            return type(value)(cut(v) for v in value)
        if isinstance(value, dict):
            return {k: cut(v) for k, v in value.items()}
        return value

    return cut(batch)
