"""The processes of a run: one process, or one per device under ``torchrun`` (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``) joined in a ``torch.distributed`` group; seeds derived per rank;
batches moved to the device; the collectives the engine needs."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from epropnp_lib.errors import ConfigError

__all__ = [
    "DistContext",
    "all_finite",
    "derive_seed",
    "gather",
    "init_distributed",
    "reduce_means",
    "to_device",
]


@dataclass(frozen=True)
class DistContext:
    """This process's place in the run."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto", timeout_minutes: float = 180.0) -> DistContext:
    """Join the ``torchrun`` process group if the environment describes one (else one process).

    ``device``: ``"auto"`` (CUDA ``LOCAL_RANK`` when available), ``"cpu"`` or ``"cuda"``.  The
    backend is ``nccl`` on CUDA and ``gloo`` on CPU; collectives time out after
    ``timeout_minutes``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' requested but CUDA is not available")
    if use_cuda:
        dev = torch.device("cuda", local % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", init_method="env://",
                                timeout=timedelta(minutes=timeout_minutes))
        owns = True
    if dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
    return DistContext(rank, world, local, dev, owns)


def derive_seed(seed: int, *keys: int | str) -> int:
    """A 63-bit seed from ``seed`` and ``keys`` (stable across runs, platforms and ranks)."""
    text = ":".join(str(k) for k in (seed, *keys)).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") & ((1 << 63) - 1)


def to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor moved to ``device`` (through dicts, lists, tuples and
    NamedTuples; other values unchanged)."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch



def all_finite(ctx: DistContext, loss: torch.Tensor) -> bool:
    flag = torch.isfinite(loss.detach()).to(torch.int32).reshape(1)
    if ctx.distributed:
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def reduce_means(ctx: DistContext, sums: dict[str, torch.Tensor], count: int) -> dict[str, float]:
    keys = sorted(sums)
    stacked = torch.stack([sums[k] for k in keys]) / count
    if ctx.distributed:
        dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
        stacked /= ctx.world_size
    values = stacked.tolist()
    tail = ["grad_norm"] if "grad_norm" in keys else []
    order = ["loss"] + [k for k in keys if k not in ("loss", "grad_norm")] + tail
    return {k: values[keys.index(k)] for k in order}



def gather(ctx: DistContext, obj: Any) -> list[Any]:
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out
