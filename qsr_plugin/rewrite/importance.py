"""Learned block ranking for ``depth_policy="importance"``: which blocks smaller variants keep.

The importance of original block ``i`` is the increase of the loss when the block (with the
blocks grown from it) is skipped, in the shallowest variant that runs every original block,
averaged over a few fixed batches (and over ranks under ``torch.distributed``). A variant of
depth ``d`` smaller than the body then runs the ``d`` most important blocks (ties go to the
lower index), so the variants stay nested; deeper variants keep their plan. The training
loops re-plan before the steps at :data:`REPLAN_FRACTIONS` of the run (the first plan
comes from the model as it starts QAT, the later ones from the model as it trains); the
plan and the measurements live in the body's ``membership`` and ``block_importance``
buffers, so ``state_dict()`` and saved files carry them. For a fixed seed the batches,
hence the plans, are the same from run to run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .._wrappers import unwrap
from .depth import depth_switchable_bodies
from .variants import use_depth

REPLAN_FRACTIONS = (0.0, 0.25, 0.5)
MEASURE_BATCHES = 4  # batches the training loops hold back for measuring


def importance_bodies(model: nn.Module) -> list:
    """``(path, body)`` of every depth-switchable body planned by importance."""
    return [(p, b) for p, b in depth_switchable_bodies(unwrap(model)) if b.policy == "importance"]


def replan_steps(steps: int) -> set[int]:
    """Steps (0-based, i.e. before step ``n + 1``) at which a run of ``steps`` re-plans."""
    return {min(steps - 1, round(fraction * steps)) for fraction in REPLAN_FRACTIONS}


def _mean_loss(model, batches, loss_fn) -> float:
    return sum(float(loss_fn(model(lr), hr)) for lr, hr in batches) / len(batches)


def measure_block_importance(
    model: nn.Module,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.l1_loss,
) -> dict[str, torch.Tensor]:
    """Loss increase when each original block is skipped, per importance-planned body."""
    model = unwrap(model)
    found = {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for path, body in importance_bodies(model):
                reference = min(d for d in body.depth_variants if d >= body.original_depth)
                with use_depth(model, reference):
                    base = _mean_loss(model, batches, loss_fn)
                    scores = []
                    for index in range(body.original_depth):
                        with body.skipping(body.group(index)):
                            scores.append(_mean_loss(model, batches, loss_fn) - base)
                found[path] = torch.tensor(scores, dtype=torch.float64)
    finally:
        model.train(was_training)
    if dist.is_available() and dist.is_initialized():
        for scores in found.values():
            dist.all_reduce(scores)
            scores /= dist.get_world_size()
    return found


def replan_by_importance(
    model: nn.Module,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.l1_loss,
) -> dict[str, dict[int, list[int]]]:
    """Measure the blocks' importance on ``batches`` (LR, HR pairs) and re-plan the
    smaller variants of every importance-planned body; returns each body's new plan.

    Raises:
        ValueError: the model has no body with ``depth_policy="importance"``.
    """
    bodies = dict(importance_bodies(model))
    if not bodies:
        raise ValueError(
            f"{type(unwrap(model)).__name__} has no depth variants planned by importance; "
            "quantize it with depth_policy='importance'"
        )
    plans = {}
    for path, scores in measure_block_importance(model, batches, loss_fn).items():
        body = bodies[path]
        ranking = sorted(range(body.original_depth), key=lambda i: (-float(scores[i]), i))
        plan = body.plan()
        for depth in plan:
            if depth < body.original_depth:
                plan[depth] = sorted(ranking[:depth])
        with torch.no_grad():
            body.block_importance.copy_(scores.to(body.block_importance.dtype))
        body.set_plan(plan)
        plans[path] = body.plan()
    return plans
