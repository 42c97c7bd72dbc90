"""Inference-only quantized layers: weights quantized once, activations quantized per call.

A :class:`FrozenQuantConv2d` / :class:`FrozenQuantLinear` is a plain Conv2d / Linear whose
``weight`` holds the dequantized weight ``codes * step`` (computed once, by
:func:`qsr_plugin.freeze`), with the integer codes and the step kept beside it for export, and
whose input passes through a :class:`FrozenActivationQuantizer`. Their outputs equal those of
the quantized training layers in eval mode. They refuse to run in training mode.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..layers import conv_settings
from ..quantizers._rounding import tensor_step_forward
from . import _integer_ops
from .qdq import dequantize_weight, quantize_dequantize
from .quantized_layers import ActivationGrid, WeightCodes

# What ``export_onnx`` makes the frozen modules emit: None (compute, not export), "float"
# (QuantizeLinear/DequantizeLinear around float kernels) or "integer" (integer kernels).
EXPORT_KERNELS = ("float", "integer")


def _refuse_training(module: nn.Module) -> None:
    if module.training:
        raise RuntimeError(
            f"{type(module).__name__} is inference-only (made by qsr_plugin.freeze); call "
            "model.eval(), or train the quantized model and freeze it again"
        )


class FrozenActivationQuantizer(nn.Module):
    """``y = round(clip((x + shift) / step, Qn, Qp)) * step`` with fixed numbers.

    Args:
        grid: the shift, step, bit width and signedness of a learned-step quantizer.

    Example:
        >>> import torch
        >>> from qsr_plugin.export.quantized_layers import ActivationGrid
        >>> q = FrozenActivationQuantizer(ActivationGrid(None, torch.tensor(0.5), 2, True))
        >>> q.eval()(torch.tensor([-3.0, 0.2, 0.3, 9.0]))
        tensor([-1.0000,  0.0000,  0.5000,  0.5000])
    """

    def __init__(self, grid: ActivationGrid) -> None:
        super().__init__()
        self.bits = grid.bits
        self.signed = grid.signed
        q_min, q_max = grid.code_range
        self.register_buffer("shift", grid.shift)
        self.register_buffer("step", grid.step)
        like = {"dtype": grid.step.dtype, "device": grid.step.device}
        self.register_buffer("q_min", torch.tensor(float(q_min), **like))
        self.register_buffer("q_max", torch.tensor(float(q_max), **like))
        self.export_kernels: str | None = None
        # Set by export_onnx when the producing convolution already wrote this quantizer's
        # codes (its shift folded in); "relu" when a ReLU stands between them.
        self.fed_codes: str | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _refuse_training(self)
        if self.export_kernels == "float":
            if self.shift is not None:
                x = x + self.shift
            return quantize_dequantize(x, self.step, self.bits, self.signed, self.q_min, self.q_max)
        return tensor_step_forward(x, self.shift, self.step, self.q_min, self.q_max)

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as UINT8 codes (integer export; see :mod:`._integer_ops`)."""
        if self.fed_codes is None and self.shift is not None:
            x = x + self.shift
        if self.fed_codes == "relu" and self.shift is not None:
            # relu(y) + shift == max(y + shift, shift): the producer added the shift, the
            # ReLU's floor moves to the shift's own code.
            floor = torch.clamp(torch.round(self.shift / self.step), self.q_min, self.q_max)
            x = torch.maximum(x, floor * self.step)
        return _integer_ops.quantize_codes(
            x, self.step, self.bits, self.signed, self.q_min, self.q_max
        )

    def extra_repr(self) -> str:
        kind = "signed" if self.signed else "unsigned"
        return f"bits={self.bits}, {kind}, shift={self.shift is not None}"


class _FrozenLayer:
    """What the frozen Conv2d and Linear share: input quantizer, codes, export switch."""

    input_quant: FrozenActivationQuantizer | None
    weight_bits: int
    act_bits: int

    def _freeze_from(self, layer: nn.Module, codes: WeightCodes | None, grid) -> None:
        self.weight_bits = layer.spec.weight_bits
        self.act_bits = layer.spec.act_bits
        weight = layer.weight.detach()
        if codes is not None:
            weight = codes.dequantized(weight.dtype)
        self.weight = nn.Parameter(weight.clone(), requires_grad=False)
        bias = layer.bias
        self.bias = (
            None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        )
        self.register_buffer("weight_codes", None if codes is None else codes.codes)
        self.register_buffer("weight_step", None if codes is None else codes.step)
        self.input_quant = None if grid is None else FrozenActivationQuantizer(grid)
        self.export_kernels: str | None = None
        # Set by export_onnx: the grid this layer's integer convolution rounds its output to
        # (the next layer's input quantizer, or a requantized 8-bit grid); see
        # _integer_ops.qlinear_conv.
        self.output_grid = None
        self.eval()

    def _operands(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _refuse_training(self)
        if self.input_quant is not None:
            x = self.input_quant(x)
        weight = self.weight
        if self.export_kernels == "float" and self.weight_codes is not None:
            weight = dequantize_weight(self.weight_codes, self.weight_step, weight.dtype)
        return x, weight

    def _integer_operands(self, x: torch.Tensor) -> tuple:
        _refuse_training(self)
        quantizer = self.input_quant
        codes = quantizer.codes(x)
        return codes, quantizer.step, quantizer.signed, self.weight_codes, self.weight_step

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, frozen w={self.weight_bits}, a={self.act_bits}"


class FrozenQuantConv2d(_FrozenLayer, nn.Conv2d):
    """An inference-only quantized Conv2d (see the module docstring)."""

    @classmethod
    def freeze(
        cls, layer: nn.Conv2d, codes: WeightCodes | None, grid: ActivationGrid | None
    ) -> FrozenQuantConv2d:
        """The frozen form of a QuantConv2d, given its weight codes and input grid."""
        frozen = cls(**conv_settings(layer), device="meta")
        frozen._freeze_from(layer, codes, grid)
        return frozen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.export_kernels == "integer":
            operands = self._integer_operands(x)
            if self.output_grid is not None:
                return _integer_ops.qlinear_conv(self, *operands, self.output_grid, x.dtype)
            return _integer_ops.conv_integer(self, *operands, x.dtype)
        x, weight = self._operands(x)
        return self._conv_forward(x, weight, self.bias)


class FrozenQuantLinear(_FrozenLayer, nn.Linear):
    """An inference-only quantized Linear (see the module docstring)."""

    @classmethod
    def freeze(
        cls, layer: nn.Linear, codes: WeightCodes | None, grid: ActivationGrid | None
    ) -> FrozenQuantLinear:
        """The frozen form of a QuantLinear, given its weight codes and input grid."""
        frozen = cls(
            layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta"
        )
        frozen._freeze_from(layer, codes, grid)
        return frozen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.export_kernels == "integer":
            return _integer_ops.matmul_integer(self, *self._integer_operands(x), x.dtype)
        x, weight = self._operands(x)
        return F.linear(x, weight, self.bias)


def is_frozen_layer(module: nn.Module) -> bool:
    """True for :class:`FrozenQuantConv2d` and :class:`FrozenQuantLinear`."""
    return isinstance(module, _FrozenLayer)
