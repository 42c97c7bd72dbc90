"""The body of one depth variant, with its shortcut and residual scales fixed.

A depth-switchable body runs every block of its execution order; a block the variant skips
still scales its input by its alpha. The frozen body keeps that order as a list of steps:

- :class:`ScaledResidualBlock`: a block the variant runs, ``alpha x + s (f(x) - x)``;
- :class:`ScaledSkip`: a block it skips, ``alpha x`` (the block's weights are not kept).

Each step takes the block's call arguments (``x`` and, for SwinIR's RSTB layers, the image
size), so the steps go in an ``nn.Sequential`` where the body was one and in an
``nn.ModuleList`` where the model iterates its body.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


class ScaledResidualBlock(nn.Module):
    """A block run by the variant: ``alpha * x + scale * (block(x) - x)``, computed as the
    depth-switchable body computes it (bit-identical outputs). A scale of exactly 1 is
    dropped (its term adds exact zeros), which saves two operations per block."""

    def __init__(self, block: nn.Module, alpha: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        self.block = block
        self.register_buffer("alpha", alpha.detach().clone())
        self.scale = None if float(scale) == 1.0 else nn.Buffer(scale.detach().clone())

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = self.block(x, *args, **kwargs)
        result = out + (self.alpha - 1) * x
        if self.scale is not None:
            result = result + (self.scale - 1) * (out - x)
        return result


class ScaledSkip(nn.Module):
    """A block skipped by the variant: ``alpha * x``."""

    def __init__(self, alpha: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("alpha", alpha.detach().clone())

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.alpha * x


def frozen_body(container: nn.Module, depth: int) -> nn.Module:
    """The steps of ``container`` (a depth-switchable body) at ``depth``, in execution order.

    Returns an ``nn.Sequential`` whose steps are named after the blocks (``"0"``, ``"16"``,
    ...) when the body was one, else an ``nn.ModuleList`` of the steps.
    """
    steps = []
    for index in container.execution_order:
        name = container.block_names[index]
        alpha, scale = container.step_scales(depth, index)
        if scale is None:
            step = ScaledSkip(alpha)
        else:
            step = ScaledResidualBlock(container._modules[name], alpha, scale)
        steps.append((name, step))
    if isinstance(container, nn.Sequential):
        return nn.Sequential(OrderedDict(steps))
    return nn.ModuleList(step for _, step in steps)
