"""Which layers every quantizer in the comparison quantizes: those qsr_plugin picks."""

from __future__ import annotations

import copy

import torch
from torch import nn

import qsr_plugin
from qsr_plugin.quantizers.learned_step import SIGNED_THRESHOLD


def body_layer_names(model: nn.Module, example_input: torch.Tensor) -> list[str]:
    """Qualified names of the layers ``qsr_plugin.quantize`` puts in the quantized body.

    The model is left untouched (a copy is quantized).

    Example:
        ``body_layer_names(msrresnet, torch.rand(1, 3, 48, 48))`` gives
        ``["body.0.conv1", "body.0.conv2", ...]``.
    """
    probe = qsr_plugin.quantize(copy.deepcopy(model), bits=4, example_input=example_input)
    return list(qsr_plugin.quantization_record(probe).quantized)


def signed_inputs(model: nn.Module, names: list[str], batch: torch.Tensor) -> dict[str, bool]:
    """Whether each named layer's input goes below zero on ``batch`` (QuantSR's threshold).

    This is the rule qsr_plugin uses to choose a signed or unsigned activation grid, so
    the other libraries get the same choice.
    """
    modules = dict(model.named_modules())
    missing = [name for name in names if name not in modules]
    if missing:
        raise ValueError(f"layers {missing} are not in {type(model).__name__}")
    minima: dict[str, float] = {}

    def record(name):
        def hook(_module, inputs):
            low = float(inputs[0].detach().min())
            minima[name] = min(low, minima.get(name, low))

        return hook

    handles = [modules[name].register_forward_pre_hook(record(name)) for name in names]
    try:
        with torch.no_grad():
            model.eval()(batch)
    finally:
        for handle in handles:
            handle.remove()
    unseen = [name for name in names if name not in minima]
    if unseen:
        raise ValueError(f"layers {unseen} did not run on the calibration batch")
    return {name: minima[name] < SIGNED_THRESHOLD for name in names}
