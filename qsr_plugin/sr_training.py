"""Short super-resolution training loops: a float model, and QuantSR QAT of all depths at once.

Both loops draw (LR, HR) patch batches from a :class:`qsr_plugin.sr_data.PatchSampler`,
minimise the L1 loss with Adam and a cosine learning-rate decay to zero, and call each
callback after every step with a :class:`StepReport`. Runs are reproducible: the batches
come from the sampler's own generator and nothing else in the loop draws random numbers,
so the same model, sampler seed and settings give the same weights (on the same machine
and thread count).

Example:
    >>> sampler = PatchSampler(images, scale=4, patch_size=24, seed=0)
    >>> train_float(model, sampler, steps=500, lr=1e-3)
    >>> qsr_plugin.quantize(model, bits=4, depth_variants=[16, 8, 4])
    >>> calibrate_from_sampler(model, sampler, batches=4, batch_size=16)
    >>> train_qat(model, sampler, steps=300, lr=2e-4)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .calibration import calibrate
from .distillation import DistillConfig, FloatTeacher
from .mixed_precision import MixedPrecision
from .quantizers.cadyq import bit_cost_loss
from .rewrite.depth import depth_switchable_bodies
from .rewrite.importance import (
    MEASURE_BATCHES,
    importance_bodies,
    replan_by_importance,
    replan_steps,
)
from .rewrite.variants import joint_variant_loss, variant_depths, variant_weights
from .sr_data import PatchSampler

FLOAT_LOSS_KEY = "float"
BIT_COST_KEY = "bit_cost"


@dataclass(frozen=True)
class StepReport:
    """What a training step reports to the callbacks.

    Attributes:
        step: steps completed so far (1 after the first step).
        total: steps in the run.
        loss: the loss that was back-propagated (for QAT: the weighted sum over depths).
        losses: each part of it: ``{"float": ...}``, or ``{"d16": ..., "d8": ...}`` for QAT,
            plus ``"bit_cost"`` for a CADyQ model (:func:`with_method_loss`).
        lr: the learning rate the step used.
    """

    step: int
    total: int
    loss: float
    losses: dict[str, float]
    lr: float


Callback = Callable[[StepReport], None]
LossFunction = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def _check_positive(value: object, argument: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{argument} must be a positive int, got {value!r}")


def _check_lr(value: object, argument: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{argument} must be a positive learning rate, got {value!r}")


def _run(
    model: nn.Module,
    sampler: PatchSampler,
    steps: int,
    batch_size: int,
    lr: float,
    loss_of_batch: LossFunction,
    callbacks: Sequence[Callback],
    special_lr: tuple[list[nn.Parameter], float] | None = None,
    amp: str | None = None,
    report_every: int = 1,
    before_step: Callable[[int], None] | None = None,
) -> list[StepReport]:
    """The shared loop: Adam on every trainable parameter, cosine decay, callbacks.

    ``special_lr``: some of the parameters and their own initial learning rate. The losses
    are read from the device (a host sync) only on reported steps. ``before_step(done)``
    runs before each step, with the number of steps done so far.
    """
    _check_positive(steps, "steps")
    _check_positive(batch_size, "batch_size")
    _check_positive(report_every, "report_every")
    _check_lr(lr, "lr")
    parameters = [p for p in model.parameters() if p.requires_grad]
    if not parameters:
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    device = parameters[0].device
    precision = MixedPrecision(amp, device, "amp")
    groups = [{"params": parameters, "lr": lr}]
    if special_lr is not None and special_lr[0]:
        chosen = {id(p) for p in special_lr[0]}
        groups = [
            {"params": [p for p in parameters if id(p) not in chosen], "lr": lr},
            {"params": [p for p in parameters if id(p) in chosen], "lr": special_lr[1]},
        ]
    optimizer = torch.optim.Adam(groups)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda done: 0.5 * (1 + math.cos(math.pi * done / steps))
    )
    was_training = model.training
    model.train()
    history = []
    try:
        for step in range(1, steps + 1):
            if before_step is not None:
                before_step(step - 1)
            lr_batch, hr_batch = (_to_device(t, device) for t in sampler.sample(batch_size))
            step_lr = optimizer.param_groups[0]["lr"]
            with precision.autocast():
                total, parts = loss_of_batch(lr_batch, hr_batch)
            optimizer.zero_grad(set_to_none=True)
            precision.backward_and_step(total, optimizer)
            schedule.step()
            if step % report_every and step != steps:
                continue
            loss = total.item()
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"training diverged by step {step}: loss {loss}; lower lr (now {lr:g})"
                )
            report = StepReport(
                step=step,
                total=steps,
                loss=loss,
                losses={name: part.item() for name, part in parts.items()},
                lr=step_lr,
            )
            history.append(report)
            for callback in callbacks:
                callback(report)
    finally:
        model.train(was_training)
    return history


def _to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``batch`` on ``device``; to a GPU through pinned memory, without waiting."""
    if device.type == "cuda":
        batch = batch.pin_memory()
    return batch.to(device, non_blocking=True)


def train_float(
    model: nn.Module,
    sampler: PatchSampler,
    steps: int,
    *,
    lr: float = 1e-3,
    batch_size: int = 16,
    callbacks: Sequence[Callback] = (),
) -> list[StepReport]:
    """Trains a float SR model with the L1 loss.

    Args:
        model: maps an N x 3 x P x P batch to N x 3 x (P*scale) x (P*scale).
        sampler: source of training patches.
        steps: optimiser steps.
        lr: initial Adam learning rate, decayed to 0 along a cosine.
        batch_size: patches per step.
        callbacks: called with a :class:`StepReport` after each step.

    Returns:
        The report of every step.

    Example:
        >>> history = train_float(model, sampler, steps=200)
        >>> history[-1].loss < history[0].loss
        True
    """

    def loss_of_batch(lr_batch, hr_batch):
        loss = F.l1_loss(model(lr_batch), hr_batch)
        return loss, {FLOAT_LOSS_KEY: loss}

    return _run(model, sampler, steps, batch_size, lr, loss_of_batch, callbacks)


def with_method_loss(
    model: nn.Module, total: torch.Tensor, parts: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``total`` plus the loss term of the model's quantization method, and ``parts`` with it.

    The one place where training loops (:func:`train_qat`, the BasicSR ``QuantSRModel``)
    add a method's own term: CADyQ's bit cost (:func:`qsr_plugin.bit_cost_loss`) under
    ``"bit_cost"``. Other methods have none and pass through unchanged.
    """
    cost = bit_cost_loss(model)
    if cost is None:
        return total, parts
    return total + cost, {**parts, BIT_COST_KEY: cost}


def depth_key(depth: int) -> str:
    """The key of a depth variant in :attr:`StepReport.losses` (``"d16"`` for 16 blocks)."""
    return f"d{depth}"


def train_qat(
    model: nn.Module,
    sampler: PatchSampler,
    steps: int,
    *,
    lr: float = 2e-4,
    batch_size: int = 16,
    depth_weights: Mapping[int, float] | None = None,
    shortcut_lr: float | None = None,
    teacher: nn.Module | None = None,
    distill: DistillConfig | None = None,
    callbacks: Sequence[Callback] = (),
    amp: str | None = None,
    report_every: int = 1,
) -> list[StepReport]:
    """Quantization-aware training of a quantized SR model, every depth variant jointly.

    Each step runs every depth variant on the same batch and back-propagates the weighted
    sum of their L1 losses (:func:`qsr_plugin.joint_variant_loss`; equal weights by
    default, as in QuantSR). A model without depth variants trains on its plain L1 loss.
    A CADyQ model adds its bit cost term (:func:`with_method_loss`).
    Quantizers should be initialised first (:func:`calibrate_from_sampler`); otherwise the
    first batch initialises them. A body quantized with ``depth_policy="importance"`` is
    re-planned before the steps at :data:`qsr_plugin.rewrite.importance.REPLAN_FRACTIONS`
    of the run, measured on the run's first batches (drawn again for training, so the
    batches are the same with any policy).

    Args:
        model: a model rewritten by :func:`qsr_plugin.quantize`.
        sampler: source of training patches.
        steps: optimiser steps.
        lr: initial Adam learning rate (weights, quantizer steps and shifts, shortcut and
            residual scales), decayed to 0 along a cosine.
        batch_size: patches per step.
        depth_weights: loss weight per depth; None for equal weights.
        shortcut_lr: initial learning rate of the depth-switchable bodies' shortcut and
            residual scales (None: ``lr``).
        teacher: the float model to distil from (see :mod:`qsr_plugin.distillation`).
        distill: the distillation weights (default :class:`DistillConfig()` with a teacher).
        callbacks: called with a :class:`StepReport` after each reported step.
        amp: mixed precision, ``"bf16"`` or ``"fp16"`` (autocast, plus a GradScaler for
            fp16); None trains in fp32.
        report_every: report (callbacks, history, divergence check) every that many
            steps and at the last; reading the losses waits for the device.

    Returns:
        The report of each reported step; ``losses`` holds one entry per depth
        (:func:`depth_key`), distillation terms included.

    Raises:
        ValueError: bad settings, ``distill`` without ``teacher``, or a teacher that does
            not match the model.

    Example:
        >>> history = train_qat(model, sampler, steps=100)
        >>> sorted(history[-1].losses)
        ['d16', 'd4', 'd8']
    """
    depths = variant_depths(model)
    if depth_weights is not None and depths == [None]:
        raise ValueError(
            "depth_weights needs a model with depth variants; quantize it with "
            "depth_variants=[...] or drop depth_weights"
        )
    weights = variant_weights(depths, depth_weights, "depth_weights")
    if distill is not None and teacher is None:
        raise ValueError("distill needs teacher=<the float model>; pass one or drop distill")
    float_teacher = None if teacher is None else FloatTeacher(teacher, model, distill)

    def loss_of_batch(lr_batch, hr_batch):
        total, losses = joint_variant_loss(
            model, lr_batch, hr_batch, F.l1_loss, weights, float_teacher
        )
        return with_method_loss(model, total, {_loss_key(d): v for d, v in losses.items()})

    special = None
    if shortcut_lr is not None:
        _check_lr(shortcut_lr, "shortcut_lr")
        special = (shortcut_parameters(model), shortcut_lr)
        if not special[0]:
            raise ValueError(
                "shortcut_lr needs a model with depth variants; quantize it with "
                "depth_variants=[...] or drop shortcut_lr"
            )
    return _run(
        model,
        sampler,
        steps,
        batch_size,
        lr,
        loss_of_batch,
        callbacks,
        special,
        amp,
        report_every,
        before_step=_importance_replanning(model, sampler, steps, batch_size),
    )


def _loss_key(depth: int | None) -> str:
    return FLOAT_LOSS_KEY if depth is None else depth_key(depth)


def _importance_replanning(
    model: nn.Module, sampler: PatchSampler, steps: int, batch_size: int
) -> Callable[[int], None] | None:
    """Re-plans importance-planned bodies at the set points, on the run's first batches."""
    if not importance_bodies(model) or steps < 1 or batch_size < 1:
        return None
    state = sampler.generator.get_state()
    device = next(model.parameters()).device
    batches = [
        tuple(_to_device(t, device) for t in sampler.sample(batch_size))
        for _ in range(MEASURE_BATCHES)
    ]
    sampler.generator.set_state(state)
    due = replan_steps(steps)

    def replan(done: int) -> None:
        if done in due:
            replan_by_importance(model, batches)

    return replan


def shortcut_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The shortcut scales alpha and residual scales of every depth-switchable body."""
    found = []
    for _, body in depth_switchable_bodies(model):
        found += [body.shortcut_scale, body.residual_scale]
    return found


def calibrate_from_sampler(
    model: nn.Module, sampler: PatchSampler, batches: int = 4, batch_size: int = 16
) -> nn.Module:
    """Initialises every quantizer of ``model`` from ``batches`` training batches.

    Runs :func:`qsr_plugin.calibrate` (every depth variant) on LR patches drawn from
    ``sampler``.
    """
    _check_positive(batches, "batches")
    _check_positive(batch_size, "batch_size")
    device = next(model.parameters()).device
    inputs = [sampler.sample(batch_size)[0].to(device) for _ in range(batches)]
    return calibrate(model, inputs)


@contextlib.contextmanager
def progress_bar(total: int, description: str, enabled: bool = True) -> Iterator[Callback]:
    """A tqdm progress bar (steps, loss, ETA) usable as a training callback.

    Example:
        >>> with progress_bar(500, "float") as bar:
        ...     train_float(model, sampler, 500, callbacks=[bar])
    """
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=description, unit="step", disable=not enabled, leave=True)

    def update(report: StepReport) -> None:
        parts = " ".join(f"{name}={value:.4f}" for name, value in report.losses.items())
        bar.set_postfix_str(f"L1 {parts}", refresh=False)
        bar.update(1)

    try:
        yield update
    finally:
        bar.close()
