"""Choosing the depth a depth-switchable model runs, and training all depths jointly."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from .._distributed import check_joint_training_wrapper
from .depth import depth_switchable_bodies


def _bodies(model: nn.Module):
    bodies = [body for _, body in depth_switchable_bodies(model)]
    if not bodies:
        raise ValueError(
            f"{type(model).__name__} has no depth variants; quantize it with "
            "qsr_plugin.quantize(model, depth_variants=[...]) first"
        )
    return bodies


def depth_variants(model: nn.Module) -> list[int]:
    """The depths a quantized model can run, deepest first."""
    return _bodies(model)[0].depth_variants


def active_depth(model: nn.Module) -> int:
    """The depth the model runs now."""
    return _bodies(model)[0].active_depth


def set_depth(model: nn.Module, depth: int) -> nn.Module:
    """Make ``model`` run ``depth`` blocks from now on; returns the model.

    Raises:
        ValueError: ``depth`` is not one of the model's depth variants.
    """
    for body in _bodies(model):
        body.set_depth(depth)
    return model


@contextlib.contextmanager
def use_depth(model: nn.Module, depth: int) -> Iterator[nn.Module]:
    """Run ``depth`` blocks inside the ``with`` block, then restore the previous depth.

    Example:
        ``with qsr_plugin.use_depth(model, 8): sr = model(lr)``
    """
    previous = active_depth(model)
    set_depth(model, depth)
    try:
        yield model
    finally:
        set_depth(model, previous)


def iter_depths(model: nn.Module) -> Iterator[int]:
    """Yield each depth variant, deepest first, with the model set to it meanwhile.

    Example:
        ``for depth in qsr_plugin.iter_depths(model): outputs[depth] = model(lr)``
    """
    for depth in depth_variants(model):
        with use_depth(model, depth):
            yield depth


def joint_variant_loss(
    model: nn.Module,
    inputs: torch.Tensor,
    target: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    weights: Mapping[int, float] | Sequence[float] | None = None,
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Run every depth variant on one batch; return the weighted loss sum and each loss.

    Backpropagate the sum once: all variants share the weights, so each step trains them
    all (QuantSR's joint training; equal weights by default). Under DDP, wrap the model
    with ``DistributedDataParallel(model, static_graph=True)``: a model wrapped without it
    is refused (it would fail in DDP's backward).

    Args:
        model: a model quantized with depth variants.
        inputs: the batch.
        target: what the model should output.
        loss_fn: e.g. ``torch.nn.functional.l1_loss``.
        weights: per-depth loss weights (a mapping, or a sequence deepest first).

    Returns:
        ``(total, {depth: loss})``.

    Raises:
        ValueError: bad ``weights``, or a DDP model without ``static_graph=True``.
    """
    depths = depth_variants(model)
    if len(depths) > 1:
        check_joint_training_wrapper(model)
    if weights is None:
        weights = dict.fromkeys(depths, 1.0)
    elif not isinstance(weights, Mapping):
        weights = list(weights)
        if len(weights) != len(depths):
            raise ValueError(
                f"weights has {len(weights)} entries for {len(depths)} depth variants {depths}"
            )
        weights = dict(zip(depths, weights, strict=True))
    if set(weights) != set(depths):
        raise ValueError(f"weights must give one value per depth variant {depths}, got {weights}")
    losses = {}
    for depth in iter_depths(model):
        losses[depth] = loss_fn(model(inputs), target)
    total = sum(weights[d] * losses[d] for d in depths)
    return total, losses
