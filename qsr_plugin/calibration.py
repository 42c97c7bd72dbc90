"""Data-driven initialisation of every quantizer in a model before training."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from .quantizers import quantizers_of
from .rewrite.variants import each_variant


def name_quantizers(model: nn.Module) -> None:
    """Tell every quantizer its qualified name in ``model``, for error messages."""
    for name, quantizer in quantizers_of(model):
        quantizer.name = name


def _run(model: nn.Module, batch: Any) -> None:
    if isinstance(batch, dict):
        model(**batch)
    elif isinstance(batch, list | tuple):
        model(*batch)
    else:
        model(batch)


def calibrate(
    model: nn.Module,
    batches: torch.Tensor | Iterable[Any],
    forward: Callable[[nn.Module, Any], Any] | None = None,
) -> nn.Module:
    """Initialise every quantizer of ``model`` from data.

    Each batch runs through every depth variant of the model (so every block's quantizers
    see the inputs of each variant that runs the block; this is the plugin's one
    calibration rule), without gradients and in eval mode (batch-norm statistics and
    dropout untouched); meanwhile each quantizer passes its input through
    unchanged and accumulates the statistics it starts from (for QuantSR: the mean absolute
    value, averaged over batches, and the minimum, which picks the signed or unsigned
    range). Then every quantizer is (re-)initialised; under ``torch.distributed`` the
    statistics are averaged (or min/max-reduced) across ranks first. The model's training
    mode is restored afterwards.

    Args:
        model: a model holding qsr_plugin quantizers.
        batches: one input tensor, or an iterable of batches; a batch that is a tuple/list
            is unpacked as positional arguments, a dict as keyword arguments.
        forward: optional ``forward(model, batch)`` to call instead of ``model(batch)``.

    Returns:
        ``model``, calibrated.

    Raises:
        ValueError: no quantizer in ``model``, no batch, or NaN/Inf in a quantizer's input
            (the message names the layer).
    """
    quantizers = quantizers_of(model)
    if not quantizers:
        raise ValueError(
            "calibrate(): the model has no qsr_plugin quantizers; "
            "call qsr_plugin.quantize(model, ...) first"
        )
    if isinstance(batches, torch.Tensor):
        batches = [batches]
    name_quantizers(model)
    run = forward or _run
    was_training = model.training
    for _, quantizer in quantizers:
        quantizer.start_calibration()
    try:
        model.eval()
        seen = 0
        with torch.no_grad():
            for batch in batches:
                for _ in each_variant(model):
                    run(model, batch)
                seen += 1
        if seen == 0:
            raise ValueError("calibrate(): batches is empty; give at least one input batch")
        unseen = [name for name, q in quantizers if not q.finish_calibration()]
    finally:
        for _, quantizer in quantizers:
            quantizer.abort_calibration()
        model.train(was_training)
    if unseen:
        warnings.warn(
            "calibrate(): these quantizers saw no data and stay uninitialised (their layers "
            f"did not run): {', '.join(unseen)}",
            stacklevel=2,
        )
    return model
