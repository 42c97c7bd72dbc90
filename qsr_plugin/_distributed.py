"""Reductions across torch.distributed ranks, no-ops in a single process."""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a torch.distributed process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def all_reduce_(tensor: torch.Tensor, op: str) -> torch.Tensor:
    """Reduce ``tensor`` in place across ranks with ``op`` ('sum', 'min' or 'max')."""
    if is_distributed():
        reduce_op = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
        dist.all_reduce(tensor, op=reduce_op[op])
    return tensor
