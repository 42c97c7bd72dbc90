"""Quantizer state across the copies of a network: EMA copy and distributed ranks."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from qsr_plugin.quantizers import quantizers_of


def quantizer_tensors(net: nn.Module) -> dict[str, torch.Tensor]:
    """Every quantizer parameter and buffer of ``net`` by qualified name."""
    return {
        f"{name}.{key}": tensor
        for name, quantizer in quantizers_of(net)
        for key, tensor in quantizer.state_dict(keep_vars=True).items()
    }


def all_initialized(net: nn.Module) -> bool:
    """Whether every quantizer of ``net`` holds its data-driven state."""
    return all(quantizer.is_initialized() for _, quantizer in quantizers_of(net))


def copy_quantizer_state(source: nn.Module, target: nn.Module) -> None:
    """Give ``target``'s quantizers the state (parameters and buffers) of ``source``'s.

    BasicSR's EMA update averages parameters only, so an EMA copy made before the
    quantizers were initialised would keep uninitialised buffers (``initialized``,
    ``signed``); this copies everything.

    Raises:
        ValueError: the two networks do not hold the same quantizers.
    """
    targets = dict(quantizers_of(target))
    sources = dict(quantizers_of(source))
    if targets.keys() != sources.keys():
        raise ValueError("the networks hold different quantizers; they must be copies")
    for name, quantizer in sources.items():
        targets[name].load_state_dict(quantizer.state_dict())


def check_same_on_all_ranks(net: nn.Module) -> int:
    """Make sure every rank holds the same quantizer state; returns the number of tensors.

    A no-op (returning the count) outside ``torch.distributed``.

    Raises:
        RuntimeError: some rank differs; the message names the tensors that differ.
    """
    tensors = quantizer_tensors(net)
    if not (dist.is_available() and dist.is_initialized()) or not tensors:
        return len(tensors)
    flat = torch.cat([t.detach().double().flatten() for t in tensors.values()])
    lowest, highest = flat.clone(), flat.clone()
    dist.all_reduce(lowest, op=dist.ReduceOp.MIN)
    dist.all_reduce(highest, op=dist.ReduceOp.MAX)
    differs = (lowest != highest).tolist()
    offset, names = 0, []
    for name, tensor in tensors.items():
        if any(differs[offset : offset + tensor.numel()]):
            names.append(name)
        offset += tensor.numel()
    if names:
        raise RuntimeError(
            f"quantizer state differs between ranks for {len(names)} tensors, e.g. "
            f"{', '.join(names[:5])}; every rank must initialise from all-reduced statistics"
        )
    return len(tensors)
