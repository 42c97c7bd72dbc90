"""Reductions across torch.distributed ranks (no-ops in a single process), and the DDP
wrapping that joint depth-variant training needs."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def is_distributed() -> bool:
    """True when a torch.distributed process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def all_reduce_(tensor: torch.Tensor, op: str) -> torch.Tensor:
    """Reduce ``tensor`` in place across ranks with ``op`` ('sum', 'min' or 'max')."""
    if is_distributed():
        reduce_op = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
        dist.all_reduce(tensor, op=reduce_op[op])
    return tensor


def joint_training_ddp(net: nn.Module, **options) -> DistributedDataParallel:
    """``DistributedDataParallel(net, static_graph=True, **options)``.

    Joint training runs one forward per depth variant before one backward, and the
    shallower variants (or all of them, when the deepest does not cover the body) leave
    parameters unused. DDP's default bookkeeping fails on both ("Expected to mark a
    variable ready only once" with ``find_unused_parameters=True``, "Expected to have
    finished reduction" without it); a static graph, recorded on the first iteration,
    handles both, whatever ``find_unused_parameters`` says.
    """
    return DistributedDataParallel(net, static_graph=True, **options)


def check_joint_training_wrapper(model: nn.Module) -> None:
    """Refuse a DDP model without a static graph for several forwards per backward."""
    if isinstance(model, DistributedDataParallel) and not model.static_graph:
        raise ValueError(
            "joint_variant_loss on a DistributedDataParallel model runs one forward per "
            "depth variant before one backward, which DDP supports only with a static "
            "graph: wrap the model with DistributedDataParallel(net, static_graph=True, ...)"
        )
