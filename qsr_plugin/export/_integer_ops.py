"""ONNX integer-kernel nodes emitted from a frozen model's forward pass (``kernels="integer"``).

Activation codes travel as UINT8: unsigned codes with zero point 0, signed codes with zero
point 128 (``code + 128``), so that every convolution is a u8 x s8 (or u8 x u8) product,
the pair onnxruntime's x86 integer kernels (VNNI, AMX) are built for. The b-bit codes (2 <= b
<= 8) fit these 8-bit containers exactly; a Clip to the b-bit range comes before each
QuantizeLinear below 8 bits.

Three products, each exact in integers with one float rescale:

* :func:`qlinear_conv`: ``QLinearConv`` writing the codes of the *next* layer's input
  quantizer, for a convolution whose output reaches that quantizer directly or through a ReLU
  (the rescale is that quantizer's own rounding, so nothing is requantized that the model does
  not requantize; the next layer's shift is folded into the int32 bias).
* :func:`conv_integer`: ``ConvInteger`` (int32 accumulation), then ``Cast``, one ``Mul`` by
  ``s_x * s_w`` and the float bias, for any other convolution.
* :func:`matmul_integer`: ``MatMulInteger`` then the same rescale, for Linear layers; ONNX
  Runtime fuses the four nodes into its ``MatMulIntegerToFloat`` kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.onnx.ops import symbolic

from .qdq import ONNX_UINT8, QDQ_OPSET

ONNX_INT32 = 6
SIGNED_ZERO_POINT = 128
WEIGHT_CODE_LIMIT = 64


def activation_zero_point(signed: bool) -> torch.Tensor:
    """The UINT8 zero point that carries signed (128) or unsigned (0) codes."""
    return torch.tensor(SIGNED_ZERO_POINT if signed else 0, dtype=torch.uint8)


def _clip_to_codes(x, step, q_min, q_max, bits):
    return x if bits == 8 else torch.clamp(x, q_min * step, q_max * step)


def quantize_codes(x, step, bits, signed, q_min, q_max) -> torch.Tensor:
    """``x`` (shift already added) as UINT8 codes of the b-bit grid: Clip, QuantizeLinear."""
    x = _clip_to_codes(x, step, q_min, q_max, bits)
    zero_point = activation_zero_point(signed)
    return symbolic(
        "QuantizeLinear",
        (x, step, zero_point),
        {},
        dtype=ONNX_UINT8,
        shape=x.shape,
        version=QDQ_OPSET,
    )


def dequantize_codes(codes, step, signed, dtype) -> torch.Tensor:
    """UINT8 codes back to ``code * step``."""
    return symbolic(
        "DequantizeLinear",
        (codes, step, activation_zero_point(signed)),
        {},
        dtype=dtype,
        shape=codes.shape,
        version=QDQ_OPSET,
    )


def _conv_attributes(conv: torch.nn.Conv2d, padded: bool = False) -> dict:
    pad_h, pad_w = (0, 0) if padded else conv.padding
    return {
        "dilations": list(conv.dilation),
        "group": conv.groups,
        "kernel_shape": list(conv.kernel_size),
        "pads": [pad_h, pad_w, pad_h, pad_w],
        "strides": list(conv.stride),
    }


def _conv_output_shape(conv: torch.nn.Conv2d, shape) -> tuple[int, ...]:
    sizes = [
        (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
        for size, pad, dilation, kernel, stride in zip(
            shape[2:], conv.padding, conv.dilation, conv.kernel_size, conv.stride, strict=True
        )
    ]
    return (shape[0], conv.out_channels, *sizes)


def _per_channel(step: torch.Tensor) -> torch.Tensor:
    return step.reshape(-1) if step.dim() > 0 else step


def _rescale(accumulator, scale, bias, channel_shape, dtype):
    output = accumulator.to(dtype) * scale.reshape(channel_shape).to(dtype)
    return output if bias is None else output + bias.reshape(channel_shape)


def conv_integer(conv, codes, x_step, x_signed, weight_codes, weight_step, dtype):
    """``ConvInteger`` of UINT8 activation codes and UINT8 weight codes (``code + 128``),
    then ``(acc * s_x * s_w) + bias`` in float."""
    shape = _conv_output_shape(conv, codes.shape)
    weights = (weight_codes.to(torch.int16) + SIGNED_ZERO_POINT).to(torch.uint8)
    # ONNX Runtime's ConvInteger pads with the value 0, not with the zero point: signed codes
    # (zero point 128) get an explicit Pad with 128, the code of 0.
    padded = x_signed and any(conv.padding)
    if padded:
        pad_h, pad_w = conv.padding
        codes = torch.nn.functional.pad(
            codes, (pad_w, pad_w, pad_h, pad_h), value=SIGNED_ZERO_POINT
        )
    accumulator = symbolic(
        "ConvInteger",
        (codes, weights, activation_zero_point(x_signed), activation_zero_point(True)),
        _conv_attributes(conv, padded),
        dtype=ONNX_INT32,
        shape=shape,
        version=QDQ_OPSET,
    )
    scale = x_step * _per_channel(weight_step)
    return _rescale(accumulator, scale, conv.bias, (1, -1, 1, 1), dtype)


def _finer_weight_codes(conv, weight_codes, weight_step):
    """Weight codes times k, step divided by k (the same weight): the int32 bias grid
    ``s_x * s_w / k`` gets k times finer. k keeps the codes within +-64, where u8 x s8 kernels
    without VNNI do not saturate their 16-bit pair sums."""
    k = max(1, WEIGHT_CODE_LIMIT // 2 ** (conv.weight_bits - 1))
    return (weight_codes.to(torch.int16) * k).to(torch.int8), weight_step / k


def int32_bias(conv, x_step, weight_step, output) -> tuple[torch.Tensor, torch.Tensor]:
    """QLinearConv's int32 bias for ``conv``'s bias plus ``output``'s shift, and how far its
    rounding moves the value before ``output``'s rounding, at most, in ``output`` steps."""
    scale = (x_step * _per_channel(weight_step)).expand(conv.out_channels)
    bias = torch.zeros(conv.out_channels, dtype=scale.dtype) if conv.bias is None else conv.bias
    if output.shift is not None:
        bias = bias + output.shift.reshape(-1)
    exact = bias / scale
    codes = torch.round(exact)
    error = ((exact - codes).abs() * scale / output.step).max()
    return codes.to(torch.int32), error


def bias_rounding_error(conv, output) -> float:
    """:func:`int32_bias`'s error for a frozen conv writing ``output``'s codes."""
    _, weight_step = _finer_weight_codes(conv, conv.weight_codes, conv.weight_step)
    return float(int32_bias(conv, conv.input_quant.step, weight_step, output)[1])


@dataclass(frozen=True)
class RequantizedOutput:
    """An 8-bit grid for a convolution's output that the model itself does not round to
    (``export_onnx(requantize=True)``): signed codes, ``step = max|y| / 127`` measured on the
    example input."""

    step: torch.Tensor
    signed: bool = True
    shift: torch.Tensor | None = None


def qlinear_conv(conv, codes, x_step, x_signed, weight_codes, weight_step, output, dtype):
    """``QLinearConv`` whose output is UINT8 codes of the ``output`` grid, returned
    dequantized.

    ``output`` is the next layer's frozen input quantizer (its shift, if any, is added to
    the bias, so the output is ``round((conv(x) + shift) / s_next)`` saturated to the 8-bit
    container; that quantizer then clips to its b-bit range and applies the ReLU floor) or a
    :class:`RequantizedOutput`.
    """
    weight_codes, weight_step = _finer_weight_codes(conv, weight_codes, weight_step)
    bias_codes, _ = int32_bias(conv, x_step, weight_step, output)
    output_zero_point = activation_zero_point(output.signed)
    output_codes = symbolic(
        "QLinearConv",
        (
            codes,
            x_step,
            activation_zero_point(x_signed),
            weight_codes,
            _per_channel(weight_step),
            torch.zeros(conv.out_channels, dtype=torch.int8)
            if weight_step.dim() > 0
            else torch.tensor(0, dtype=torch.int8),
            output.step,
            output_zero_point,
            bias_codes,
        ),
        _conv_attributes(conv),
        dtype=ONNX_UINT8,
        shape=_conv_output_shape(conv, codes.shape),
        version=QDQ_OPSET,
    )
    return dequantize_codes(output_codes, output.step, output.signed, dtype)


def matmul_integer(linear, codes, x_step, x_signed, weight_codes, weight_step, dtype):
    """``MatMulInteger`` of UINT8 activation codes and INT8 weight codes (transposed), then
    ``(acc * s_x * s_w) + bias`` in float."""
    weights = weight_codes.t().contiguous()
    accumulator = symbolic(
        "MatMulInteger",
        (codes, weights, activation_zero_point(x_signed), torch.tensor(0, dtype=torch.int8)),
        {},
        dtype=ONNX_INT32,
        shape=(*codes.shape[:-1], linear.out_features),
        version=QDQ_OPSET,
    )
    scale = x_step * _per_channel(weight_step)
    return _rescale(accumulator, scale, linear.bias, (-1,), dtype)
