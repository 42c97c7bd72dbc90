"""Learned block ranking for ``depth_policy="importance"``: which blocks smaller variants keep.

Blocks are ranked by greedy backward elimination (QuantSR+ prunes the least critical blocks
progressively): in the shallowest variant that runs every original block, the block whose
skipping (with the blocks grown from it) raises the loss least is dropped, then the next
among the remaining ones, until the smallest variant's depth is left. Losses are averaged
over a few fixed batches (and over ranks under ``torch.distributed``); ties go to the lower
index. A variant of depth ``d`` smaller than the body runs the ``d`` blocks left when only
``d`` remain, so the variants stay nested; deeper variants keep their plan. The training
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


def _averaged_over_ranks(values: list[float]) -> torch.Tensor:
    found = torch.tensor(values, dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(found)
        found /= dist.get_world_size()
    return found


def _eliminate(body, run_loss: Callable[[], float], keep: int) -> tuple[list[int], torch.Tensor]:
    """Greedy backward elimination over the original blocks of ``body``.

    Starting from all of them, repeatedly drop the block whose skipping (with its grown
    copies) raises the loss least, until ``keep`` remain. Returns the blocks from least
    to most important (the last ``keep`` are the survivors, ordered by the loss increase
    when each is dropped from the survivors) and each block's increase when it was dropped.
    """

    def loss_running(kept: list[int]) -> float:
        skipped = [j for i in range(body.original_depth) if i not in kept for j in body.group(i)]
        with body.skipping(skipped):
            return run_loss()

    kept = list(range(body.original_depth))
    increases = torch.zeros(body.original_depth, dtype=torch.float64)
    order: list[int] = []
    while True:
        base = loss_running(kept)
        losses = [loss_running([j for j in kept if j != i]) for i in kept]
        rise = _averaged_over_ranks(losses) - float(_averaged_over_ranks([base]))
        if len(kept) <= keep:
            survivors = sorted(range(len(kept)), key=lambda k: (float(rise[k]), kept[k]))
            for k in survivors:
                increases[kept[k]] = rise[k]
            return order + [kept[k] for k in survivors], increases
        weakest = min(range(len(kept)), key=lambda k: (float(rise[k]), kept[k]))
        increases[kept[weakest]] = rise[weakest]
        order.append(kept.pop(weakest))


def measure_block_importance(
    model: nn.Module,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.l1_loss,
) -> dict[str, tuple[list[int], torch.Tensor]]:
    """Per importance-planned body: its original blocks from least to most important and
    the loss increase measured when each was dropped (see :func:`_eliminate`)."""
    model = unwrap(model)
    found = {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for path, body in importance_bodies(model):
                reference = min(d for d in body.depth_variants if d >= body.original_depth)
                keep = min(body.depth_variants)
                with use_depth(model, reference):
                    found[path] = _eliminate(
                        body,
                        lambda: _mean_loss(model, batches, loss_fn),
                        min(keep, body.original_depth),
                    )
    finally:
        model.train(was_training)
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
    for path, (ascending, increases) in measure_block_importance(model, batches, loss_fn).items():
        body = bodies[path]
        plan = body.plan()
        for depth in plan:
            if depth < body.original_depth:
                plan[depth] = sorted(ascending[body.original_depth - depth :])
        with torch.no_grad():
            body.block_importance.copy_(increases.to(body.block_importance.dtype))
        body.set_plan(plan)
        plans[path] = body.plan()
    return plans
