"""Choosing the depth a depth-switchable model runs, and training all depths jointly.

This module owns two rules: which depths a model has (:func:`variant_depths`, ``[None]``
for a model without variants) and the joint loss of all variants
(:func:`joint_variant_losses`), which ``train_qat``, the timm glue and BasicSR's
``QuantSRModel`` all call.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from .._distributed import check_joint_training_wrapper
from .._wrappers import unwrap
from .depth import depth_switchable_bodies

if TYPE_CHECKING:
    from ..distillation import FloatTeacher

Depth = int | None
PIXEL_LOSS = "pix"


def _bodies(model: nn.Module):
    bodies = [body for _, body in depth_switchable_bodies(unwrap(model))]
    if not bodies:
        raise ValueError(
            f"{type(model).__name__} has no depth variants; quantize it with "
            "qsr_plugin.quantize(model, depth_variants=[...]) first"
        )
    return bodies


def depth_variants(model: nn.Module) -> list[int]:
    """The depths a quantized model can run, deepest first."""
    return _bodies(model)[0].depth_variants


def variant_depths(model: nn.Module) -> list[Depth]:
    """The depths of any model, deepest first: ``[None]`` for a model without variants."""
    bodies = depth_switchable_bodies(unwrap(model))
    return bodies[0][1].depth_variants if bodies else [None]


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


def each_variant(model: nn.Module) -> Iterator[Depth]:
    """Like :func:`iter_depths` for any model: yields ``None`` once for a model without
    depth variants."""
    if variant_depths(model) == [None]:
        yield None
    else:
        yield from iter_depths(model)


def variant_weights(
    depths: Sequence[Depth],
    weights: Mapping[Depth, float] | Sequence[float] | None,
    argument: str = "weights",
) -> dict[Depth, float]:
    """One loss weight per depth (all 1 for None), checked.

    Args:
        depths: the model's depths (:func:`variant_depths`).
        weights: a mapping naming every depth, or a sequence deepest first.
        argument: the name shown in errors (e.g. ``train.variant_loss_weights``).

    Raises:
        ValueError: wrong number of weights or unknown depths, a weight that is negative
            or not a number, or all weights zero.
    """
    if weights is None:
        return dict.fromkeys(depths, 1.0)
    shown = [d for d in depths if d is not None] or "none (the model has no depth variants)"
    if isinstance(weights, Mapping):
        if set(weights) != set(depths):
            raise ValueError(
                f"{argument} must name every depth variant {shown}, got {dict(weights)}"
            )
        chosen = {d: weights[d] for d in depths}
    elif isinstance(weights, Sequence) and not isinstance(weights, str):
        if len(weights) != len(depths):
            raise ValueError(
                f"{argument} has {len(weights)} weights for the depth variants {shown}; give "
                "one weight per variant, deepest first"
            )
        chosen = dict(zip(depths, weights, strict=True))
    else:
        raise ValueError(
            f"{argument} must be a list (deepest variant first) or a mapping, got {weights!r}"
        )
    for depth, weight in chosen.items():
        if (
            isinstance(weight, bool)
            or not isinstance(weight, int | float)
            or not math.isfinite(weight)
            or weight < 0
        ):
            raise ValueError(
                f"{argument}: the weight of depth {depth} must be a number >= 0, got {weight!r}"
            )
    if not any(chosen.values()):
        raise ValueError(f"{argument}: all weights are 0, so nothing would be trained")
    return {d: float(w) for d, w in chosen.items()}


def joint_variant_losses(
    model: nn.Module,
    inputs: torch.Tensor,
    target: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    weights: Mapping[Depth, float] | Sequence[float] | None = None,
    teacher: FloatTeacher | None = None,
) -> tuple[torch.Tensor, dict[Depth, dict[str, torch.Tensor]]]:
    """Every variant's loss on one batch, by part; see :func:`joint_variant_loss`.

    Returns:
        ``(total, {depth: {"pix": ..., "distill_output": ..., "distill_features": ...}})``
        (the distillation parts only with a teacher; depth None for a model without
        variants). ``total`` is the weighted sum of every part of every variant.
    """
    depths = variant_depths(model)
    weights = variant_weights(depths, weights)
    if len(depths) > 1:
        check_joint_training_wrapper(model)
    references = None if teacher is None else teacher.references(inputs)
    parts: dict[Depth, dict[str, torch.Tensor]] = {}
    total = None
    for depth in each_variant(model):
        with contextlib.ExitStack() as stack:
            features = (
                None if teacher is None else stack.enter_context(teacher.student_features(model))
            )
            output = model(inputs)
        depth_parts = {PIXEL_LOSS: loss_fn(output.float(), target)}
        if teacher is not None:
            depth_parts.update(teacher.losses(output, features, references))
        parts[depth] = depth_parts
        term = weights[depth] * sum(depth_parts.values())
        total = term if total is None else total + term
    return total, parts


def joint_variant_loss(
    model: nn.Module,
    inputs: torch.Tensor,
    target: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    weights: Mapping[int, float] | Sequence[float] | None = None,
    teacher: FloatTeacher | None = None,
) -> tuple[torch.Tensor, dict[Depth, torch.Tensor]]:
    """Run every depth variant on one batch; return the weighted loss sum and each loss.

    Backpropagate the sum once: all variants share the weights, so each step trains them
    all (QuantSR's joint training; equal weights by default). With a ``teacher``
    (:class:`qsr_plugin.distillation.FloatTeacher`), each variant's loss also holds the
    distance of its output to the float model's and of its body features to the float
    body's at the blocks it runs. A model without depth variants gives one loss, under
    depth None. Under DDP, wrap the model with
    ``DistributedDataParallel(model, static_graph=True)``: a model wrapped without it is
    refused (it would fail in DDP's backward).

    Args:
        model: a quantized model (with or without depth variants).
        inputs: the batch.
        target: what the model should output.
        loss_fn: e.g. ``torch.nn.functional.l1_loss``.
        weights: per-depth loss weights (a mapping, or a sequence deepest first).
        teacher: the float model to distil from, or None.

    Returns:
        ``(total, {depth: loss})``.

    Raises:
        ValueError: bad ``weights``, or a DDP model without ``static_graph=True``.
    """
    total, parts = joint_variant_losses(model, inputs, target, loss_fn, weights, teacher)
    return total, {depth: sum(p.values()) for depth, p in parts.items()}
