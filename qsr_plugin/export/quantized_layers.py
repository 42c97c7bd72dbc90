"""The quantized layers of a model as deployment sees them: integer weight codes and steps.

Deployment (saving packed files, freezing, ONNX export) supports the learned-step methods
``quantsr`` and ``lsq``: their quantizers are fully described by a step, an optional shift
and a code range, so ``round(clip(w / s, Qn, Qp))`` are the weight's integer codes and
``codes * s`` reproduces the quantized weight bit for bit. ``pams`` recomputes its weight
scale from the float weights at every step and ``dorefa`` normalises them with tanh, so their
codes do not determine the layer; they are training baselines and are refused here.
``cadyq`` picks its activation bit width per input image, so it is refused as well.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .._wrappers import unwrap
from ..layers import is_quantized_layer
from ..quantizers import LearnedStepActivationQuantizer, LearnedStepWeightQuantizer
from ..quantizers.learned_step import code_range
from ..rewrite.quantize import quantization_record

DEPLOYABLE_METHODS = ("quantsr", "lsq")


def quantized_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every QuantConv2d/QuantLinear of ``model`` with its qualified name."""
    return [(name, m) for name, m in model.named_modules() if is_quantized_layer(m)]


def require_quantized(model: nn.Module, caller: str) -> nn.Module:
    """``model`` without its wrappers (``unwrap``); raise unless it was quantized."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{caller} needs a torch.nn.Module, got {type(model).__name__}")
    model = unwrap(model)
    if quantization_record(model) is None:
        raise ValueError(
            f"{caller}: {type(model).__name__} was never quantized; call "
            "qsr_plugin.quantize(model, ...) and calibrate or train it first"
        )
    return model


def require_deployable(model: nn.Module, caller: str) -> None:
    """Raise unless every quantized layer uses a learned-step method and is initialised.

    Raises:
        ValueError: a layer uses another method; the message names the layer.
        RuntimeError: a quantizer was never initialised; the message names it.
    """
    for name, layer in quantized_layers(model):
        if layer.spec.method == "cadyq":
            raise ValueError(
                f"{caller}: {name} uses method 'cadyq', whose activation bit width its "
                "selector picks per input image, so the layer has no fixed integer form to "
                "save, freeze or export; evaluate it fake-quantized (report(model, "
                "saved_file=False) counts it at the bits measured by measure_bits)"
            )
        if layer.spec.method not in DEPLOYABLE_METHODS:
            raise ValueError(
                f"{caller}: {name} uses method {layer.spec.method!r}; deployment supports the "
                f"learned-step methods {', '.join(map(repr, DEPLOYABLE_METHODS))}, whose codes "
                "and step define the layer exactly"
            )
        for role, quantizer in (
            ("act_quant", layer.act_quant),
            ("weight_quant", layer.weight_quant),
        ):
            if quantizer is not None and not quantizer.is_initialized():
                raise RuntimeError(
                    f"{caller}: {name}.{role} was never initialised; call "
                    "qsr_plugin.calibrate(model, batches) or train the model first"
                )


@dataclass(frozen=True)
class WeightCodes:
    """A quantized weight as signed integer codes and the step that scales them.

    Attributes:
        codes: int8 tensor of the weight's shape, values in the signed ``bits``-bit range.
        step: the quantizer's step (0-dim, or per output channel broadcastable to codes).
        bits: the weight bit width.
    """

    codes: torch.Tensor
    step: torch.Tensor
    bits: int

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        """``codes * step``: the weight the quantized layer computes with."""
        return self.codes.to(dtype) * self.step.to(dtype)


def weight_codes(layer: nn.Module) -> WeightCodes:
    """The integer codes of a quantized layer's weight (learned-step weight quantizer).

    The codes are ``round(clip(w / s, Qn, Qp))``, computed with the same operations as the
    quantizer's forward pass, so ``codes * s`` equals its output bit for bit.
    """
    quantizer = layer.weight_quant
    if not isinstance(quantizer, LearnedStepWeightQuantizer):
        raise ValueError(f"{quantizer.label} is not a learned-step weight quantizer")
    weight = layer.weight.detach()
    step = quantizer.step.detach()
    q_min, q_max = code_range(quantizer.bits, signed=True)
    codes = (weight / step).clamp(q_min, q_max).round()
    return WeightCodes(codes.to(torch.int8), step.clone(), quantizer.bits)


@dataclass(frozen=True)
class ActivationGrid:
    """A learned-step activation quantizer as numbers: ``round(clip((x + shift) / step))``.

    Attributes:
        shift: the redistribution shift tau (broadcastable to the input), or None.
        step: the 0-dim step.
        bits: the bit width.
        signed: signed codes ``[-2^(b-1), 2^(b-1) - 1]`` or unsigned ``[0, 2^b - 1]``.
    """

    shift: torch.Tensor | None
    step: torch.Tensor
    bits: int
    signed: bool

    @property
    def code_range(self) -> tuple[int, int]:
        """``(Qn, Qp)``."""
        return code_range(self.bits, self.signed)


def activation_grid(quantizer: nn.Module) -> ActivationGrid:
    """The numbers of an initialised learned-step activation quantizer."""
    if not isinstance(quantizer, LearnedStepActivationQuantizer):
        raise ValueError(f"{quantizer.label} is not a learned-step activation quantizer")
    shift = None if quantizer.shift is None else quantizer.shift.detach().clone()
    return ActivationGrid(
        shift, quantizer.step.detach().clone(), quantizer.bits, quantizer.is_signed()
    )
