"""Quantized Conv2d and Linear: float layers whose input and weight pass through quantizers.

Both subclass their float layer, keep its parameter names (``weight``, ``bias``) and convert
both ways: ``QuantConv2d.from_float(conv, spec)`` and ``quantized.to_float()``. The bias
stays in float. Either side can stay in float (32 bits), in which case its quantizer is None.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from ._validation import FLOAT_BITS
from .config import QuantSpec
from .quantizers import Quantizer, get_method


def conv_settings(conv: nn.Conv2d) -> dict:
    """The constructor arguments that rebuild ``conv``'s geometry (channels, kernel, stride,
    padding and its mode, dilation, groups, whether it has a bias), as keywords."""
    return dict(
        in_channels=conv.in_channels,
        out_channels=conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )


class _QuantizedLayer:
    """What QuantConv2d and QuantLinear share: the quantizers and the float conversions."""

    act_quant: Quantizer | None
    weight_quant: Quantizer | None
    spec: QuantSpec
    FLOAT_TYPE: type[nn.Module]
    CHANNEL_DIM: int

    def _build_quantizers(self, spec: QuantSpec, in_channels: int, out_channels: int) -> None:
        method = get_method(spec.method)
        options = spec.options()
        self.spec = spec
        weight = self.weight
        self.act_quant = None
        self.weight_quant = None
        if spec.act_bits != FLOAT_BITS:
            act = method.make_activation(spec.act_bits, in_channels, self.CHANNEL_DIM, options)
            self.act_quant = act.to(device=weight.device, dtype=weight.dtype)
        if spec.weight_bits != FLOAT_BITS:
            wq = method.make_weight(spec.weight_bits, out_channels, weight.dim(), options)
            self.weight_quant = wq.to(device=weight.device, dtype=weight.dtype)

    def _quantized_operands(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.act_quant is not None:
            x = self.act_quant(x)
        weight = self.weight if self.weight_quant is None else self.weight_quant(self.weight)
        return x, weight

    @classmethod
    def _check_convertible(cls, layer: nn.Module) -> None:
        if isinstance(layer, _QuantizedLayer):
            raise ValueError(f"{type(layer).__name__} is already quantized")
        if type(layer).forward is not cls.FLOAT_TYPE.forward:
            raise ValueError(
                f"{type(layer).__name__} overrides {cls.FLOAT_TYPE.__name__}.forward, so a "
                "quantized copy would change what it computes; exclude it from quantization"
            )
        if parametrize.is_parametrized(layer) or layer._forward_pre_hooks:
            raise ValueError(
                f"this {cls.FLOAT_TYPE.__name__} has parametrizations or pre-forward hooks "
                "(weight norm, spectral norm?), whose weight is computed on the fly; remove "
                "them (e.g. torch.nn.utils.remove_weight_norm) or exclude the layer"
            )
        for role in ("weight", "bias"):
            tensor = getattr(layer, role)
            if tensor is not None and not isinstance(tensor, nn.Parameter):
                raise ValueError(
                    f"its {role} is a plain {type(tensor).__name__}, not an nn.Parameter, so it "
                    f"would be neither trained nor shared; make it one (layer.{role} = "
                    f"nn.Parameter(layer.{role})) or exclude the layer"
                )

    def _adopt(self, layer: nn.Module) -> None:
        """Share ``layer``'s parameters, hooks and mode instead of copying them."""
        self.weight = layer.weight
        self.bias = layer.bias
        self._forward_hooks = layer._forward_hooks
        self.train(layer.training)

    def extra_repr(self) -> str:
        quant = f"method={self.spec.method}, w={self.spec.weight_bits}, a={self.spec.act_bits}"
        return f"{super().extra_repr()}, {quant}"


class QuantConv2d(_QuantizedLayer, nn.Conv2d):
    """A Conv2d whose input and weight are fake-quantized.

    Args:
        *args: as :class:`torch.nn.Conv2d`.
        spec: how to quantize (method and bits).
        **kwargs: as :class:`torch.nn.Conv2d`.

    Example:
        >>> conv = nn.Conv2d(8, 8, 3, padding=1)
        >>> q = QuantConv2d.from_float(conv, QuantSpec(weight_bits=4, act_bits=4))
        >>> q(torch.randn(1, 8, 6, 6)).shape
        torch.Size([1, 8, 6, 6])
        >>> type(q.to_float()) is nn.Conv2d
        True
    """

    FLOAT_TYPE = nn.Conv2d
    CHANNEL_DIM = -3

    def __init__(self, *args, spec: QuantSpec | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._build_quantizers(spec or QuantSpec(), self.in_channels, self.out_channels)

    @classmethod
    def from_float(cls, conv: nn.Conv2d, spec: QuantSpec | None = None) -> QuantConv2d:
        """A quantized layer sharing ``conv``'s parameters (any stride, padding, groups)."""
        cls._check_convertible(conv)
        quantized = cls(
            **conv_settings(conv),
            device=conv.weight.device,
            dtype=conv.weight.dtype,
            spec=spec,
        )
        quantized._adopt(conv)
        return quantized

    def to_float(self) -> nn.Conv2d:
        """A plain Conv2d sharing this layer's (unquantized) parameters."""
        conv = nn.Conv2d(**conv_settings(self), device="meta")
        conv.weight, conv.bias = self.weight, self.bias
        return conv.train(self.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, weight = self._quantized_operands(x)
        return self._conv_forward(x, weight, self.bias)


class QuantLinear(_QuantizedLayer, nn.Linear):
    """A Linear whose input (any leading shape) and weight are fake-quantized.

    Args:
        *args: as :class:`torch.nn.Linear`.
        spec: how to quantize (method and bits).
        **kwargs: as :class:`torch.nn.Linear`.

    Example:
        >>> q = QuantLinear.from_float(nn.Linear(16, 4), QuantSpec(weight_bits=2, act_bits=2))
        >>> q(torch.randn(2, 10, 16)).shape
        torch.Size([2, 10, 4])
    """

    FLOAT_TYPE = nn.Linear
    CHANNEL_DIM = -1

    def __init__(self, *args, spec: QuantSpec | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._build_quantizers(spec or QuantSpec(), self.in_features, self.out_features)

    @classmethod
    def from_float(cls, linear: nn.Linear, spec: QuantSpec | None = None) -> QuantLinear:
        """A quantized layer sharing ``linear``'s parameters."""
        cls._check_convertible(linear)
        quantized = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
            spec=spec,
        )
        quantized._adopt(linear)
        return quantized

    def to_float(self) -> nn.Linear:
        """A plain Linear sharing this layer's (unquantized) parameters."""
        linear = nn.Linear(
            self.in_features, self.out_features, bias=self.bias is not None, device="meta"
        )
        linear.weight, linear.bias = self.weight, self.bias
        return linear.train(self.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, weight = self._quantized_operands(x)
        return F.linear(x, weight, self.bias)


@dataclass(frozen=True)
class LayerTypes:
    """A float layer type, the quantized layer that replaces it, and the inference layer that
    :func:`qsr_plugin.freeze` makes of that one.

    Attributes:
        float: the float layer type (its subclasses are quantized the same way).
        quantized: the quantized layer (:class:`QuantConv2d`, :class:`QuantLinear`).
        frozen_name: the frozen layer's class in :mod:`qsr_plugin.export.frozen_layers`
            (named, not imported: the export package imports this module).
    """

    float: type[nn.Module]
    quantized: type[_QuantizedLayer]
    frozen_name: str

    @property
    def frozen(self) -> type[nn.Module]:
        """The frozen layer type."""
        from .export import frozen_layers

        return getattr(frozen_layers, self.frozen_name)


LAYER_TYPES = (
    LayerTypes(nn.Conv2d, QuantConv2d, "FrozenQuantConv2d"),
    LayerTypes(nn.Linear, QuantLinear, "FrozenQuantLinear"),
)
COMPUTE_TYPES = tuple(types.float for types in LAYER_TYPES)  # the layers quantize() replaces


def layer_types(module: nn.Module) -> LayerTypes:
    """The :data:`LAYER_TYPES` row of a Conv2d/Linear layer, float (or a subclass) or quantized.

    Raises:
        TypeError: ``module`` is neither a Conv2d nor a Linear.
    """
    for types in LAYER_TYPES:
        if isinstance(module, types.float):
            return types
    raise TypeError(f"{type(module).__name__} is not a Conv2d or Linear layer")


def is_quantized_layer(module: nn.Module) -> bool:
    """True for the quantized layers of this package."""
    return isinstance(module, _QuantizedLayer)
