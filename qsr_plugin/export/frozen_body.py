"""The body of one depth variant, with its shortcut scales and gates fixed.

A depth-switchable body runs every block of its execution order; a block the variant skips
still scales its input by its alpha. The frozen body keeps that order as a list of steps:

- :class:`ScaledResidualBlock`: an original block the variant runs, ``f(x) + (alpha - 1) x``;
- :class:`GatedGrownBlock`: a grown block it runs, ``alpha x + gamma (f(x) - x)``;
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
    """An original block run by the variant: ``block(x) + (alpha - 1) * x``."""

    def __init__(self, block: nn.Module, alpha: torch.Tensor) -> None:
        super().__init__()
        self.block = block
        self.register_buffer("alpha", alpha.detach().clone())

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = self.block(x, *args, **kwargs)
        return out + (self.alpha - 1) * x


class GatedGrownBlock(nn.Module):
    """A grown block run by the variant: ``alpha * x + gate * (block(x) - x)``."""

    def __init__(self, block: nn.Module, alpha: torch.Tensor, gate: torch.Tensor) -> None:
        super().__init__()
        self.block = block
        self.register_buffer("alpha", alpha.detach().clone())
        self.register_buffer("gate", gate.detach().clone())

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = self.block(x, *args, **kwargs)
        return self.alpha * x + self.gate * (out - x)


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
    chosen = container.variants[depth]
    steps = []
    for index in container.execution_order:
        name = container.block_names[index]
        alpha = container.shortcut_scale[index]
        if index not in chosen:
            step = ScaledSkip(alpha)
        elif index < container.original_depth:
            step = ScaledResidualBlock(container._modules[name], alpha)
        else:
            gate = container.residual_gate[index - container.original_depth]
            step = GatedGrownBlock(container._modules[name], alpha, gate)
        steps.append((name, step))
    if isinstance(container, nn.Sequential):
        return nn.Sequential(OrderedDict(steps))
    return nn.ModuleList(step for _, step in steps)
