"""brevitas QAT on the same body layers, with its standard low-bit quantizers.

Each named Conv2d / Linear becomes ``brevitas.nn.QuantConv2d`` / ``QuantLinear`` sharing
nothing with the original (the weights are copied), with:

- weights: ``Int8WeightPerTensorFloat`` at ``bits`` bits (narrow signed range, scale from
  the weight's max, recomputed every step);
- input activations: ``Int8ActPerTensorFloat`` (signed) or ``Uint8ActPerTensorFloat``
  (unsigned) at ``bits`` bits, learned scale initialised from runtime percentile
  statistics; signed where the float layer's input goes below zero on a calibration batch,
  the rule qsr_plugin uses;
- outputs and bias in float, as in qsr_plugin.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from qsr_plugin.layers import conv_settings

from .body_layers import signed_inputs


def _brevitas_layer(layer: nn.Module, bits: int, signed: bool) -> nn.Module:
    from brevitas.nn import QuantConv2d, QuantLinear
    from brevitas.quant import (
        Int8ActPerTensorFloat,
        Int8WeightPerTensorFloat,
        Uint8ActPerTensorFloat,
    )

    options = dict(
        weight_quant=Int8WeightPerTensorFloat,
        weight_bit_width=bits,
        input_quant=Int8ActPerTensorFloat if signed else Uint8ActPerTensorFloat,
        input_bit_width=bits,
        return_quant_tensor=False,
        device=layer.weight.device,
        dtype=layer.weight.dtype,
    )
    if type(layer) is nn.Conv2d:
        quantized = QuantConv2d(**conv_settings(layer), **options)
    elif type(layer) is nn.Linear:
        quantized = QuantLinear(
            layer.in_features, layer.out_features, bias=layer.bias is not None, **options
        )
    else:
        raise TypeError(f"brevitas adapter handles nn.Conv2d and nn.Linear, not {type(layer)}")
    with torch.no_grad():
        quantized.weight.copy_(layer.weight)
        if layer.bias is not None:
            quantized.bias.copy_(layer.bias)
    return quantized.train(layer.training)


def prepare_brevitas(
    model: nn.Module, layer_names: list[str], bits: int, calibration_batch: torch.Tensor
) -> nn.Module:
    """A copy of ``model`` whose ``layer_names`` are brevitas layers at ``bits`` bits.

    Example:
        ``prepare_brevitas(msrresnet, ["body.0.conv1", ...], 4, lr_batch)``
    """
    if not layer_names:
        raise ValueError("layer_names is empty; name the layers to quantize")
    prepared = copy.deepcopy(model)
    signed = signed_inputs(prepared, layer_names, calibration_batch)
    for name in layer_names:
        parent_name, _, child = name.rpartition(".")
        parent = prepared.get_submodule(parent_name)
        setattr(parent, child, _brevitas_layer(getattr(parent, child), bits, signed[name]))
    return prepared.train(model.training)
