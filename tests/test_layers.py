"""QuantConv2d / QuantLinear: conversion both ways, geometry, gradients, errors."""

import pytest
import timm.layers
import torch
import torch.nn.functional as F
from torch import nn

from qsr_plugin import QuantConv2d, QuantLinear, QuantSpec
from qsr_plugin.layers import conv_settings, layer_types
from qsr_plugin.quantizers._rounding import learned_step_fake_quantize

CONV_GEOMETRIES = [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=3, padding=2, dilation=2),
    dict(kernel_size=3, padding=1, groups=4),
    dict(kernel_size=1),
    dict(kernel_size=(3, 5), padding=(1, 2), bias=False),
    dict(kernel_size=3, padding="same"),
    dict(kernel_size=3, padding=1, padding_mode="reflect"),
    dict(kernel_size=3, padding=1, padding_mode="replicate"),
    dict(kernel_size=3, padding=1, padding_mode="circular"),
]


def _reference_quantized_conv(conv, quantized, x):
    """The conv applied to the separately fake-quantized input and weight."""
    aq, wq = quantized.act_quant, quantized.weight_quant
    a_min, a_max, _ = aq.codes(x)
    xq = learned_step_fake_quantize(x, aq.step, a_min, a_max, 1.0, 1.0, shift=aq.shift)
    w_min, w_max, _ = wq.codes(conv.weight)
    w = learned_step_fake_quantize(conv.weight, wq.step, w_min, w_max, 1.0, 1.0)
    return conv._conv_forward(xq, w, conv.bias)


@pytest.mark.parametrize("geometry", CONV_GEOMETRIES, ids=lambda g: str(g))
def test_quant_conv_equals_float_conv_on_quantized_operands(geometry):
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 12, **geometry)
    quantized = QuantConv2d.from_float(conv, QuantSpec(weight_bits=4, act_bits=4)).train()
    x = torch.randn(2, 8, 11, 13)
    quantized(x)  # initialise
    with torch.no_grad():
        quantized.act_quant.shift.uniform_(-0.1, 0.1)
    y = quantized(x)
    assert torch.allclose(y, _reference_quantized_conv(conv, quantized, x), atol=1e-5)
    assert y.shape == conv(x).shape
    assert not torch.allclose(y, conv(x), atol=1e-3)  # quantization does change outputs


def test_from_float_shares_parameters_and_keeps_state_dict_keys():
    conv = nn.Conv2d(4, 8, 3, stride=2, padding=2, dilation=2, groups=2, padding_mode="reflect")
    quantized = QuantConv2d.from_float(conv)
    assert quantized.weight is conv.weight and quantized.bias is conv.bias
    assert conv_settings(quantized) == conv_settings(conv)  # same geometry as the float layer
    float_keys = set(conv.state_dict())
    assert float_keys <= set(quantized.state_dict())
    missing = quantized.load_state_dict(conv.state_dict(), strict=False).missing_keys
    assert all(k.startswith(("act_quant.", "weight_quant.")) for k in missing)


def test_to_float_round_trip_computes_the_float_layer():
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1, groups=1, padding_mode="reflect")
    back = QuantConv2d.from_float(conv).to_float()
    x = torch.randn(1, 3, 9, 9)
    assert type(back) is nn.Conv2d and torch.equal(back(x), conv(x))
    linear = nn.Linear(6, 2)
    back_linear = QuantLinear.from_float(linear).to_float()
    assert type(back_linear) is nn.Linear
    assert torch.equal(back_linear(torch.ones(6)), linear(torch.ones(6)))


def test_32_bits_on_both_sides_is_the_float_layer():
    conv = nn.Conv2d(3, 5, 3, padding=1)
    quantized = QuantConv2d.from_float(conv, QuantSpec(weight_bits=32, act_bits=32))
    assert quantized.act_quant is None and quantized.weight_quant is None
    x = torch.randn(1, 3, 6, 6)
    assert torch.equal(quantized(x), conv(x))


def test_weight_only_and_activation_only_quantization():
    conv = nn.Conv2d(3, 5, 3, padding=1)
    weight_only = QuantConv2d.from_float(conv, QuantSpec(weight_bits=2, act_bits=32)).train()
    act_only = QuantConv2d.from_float(conv, QuantSpec(weight_bits=32, act_bits=2)).train()
    assert weight_only.act_quant is None and act_only.weight_quant is None
    x = torch.randn(1, 3, 6, 6)
    weight_only(x)
    w = weight_only.weight_quant(conv.weight)
    assert torch.unique(w).numel() <= 4
    assert torch.allclose(weight_only(x), F.conv2d(x, w, conv.bias, padding=1))


@pytest.mark.parametrize("shape", [(5, 16), (2, 7, 16), (2, 3, 4, 16)])
def test_quant_linear_on_any_leading_shape(shape):
    linear = nn.Linear(16, 8)
    quantized = QuantLinear.from_float(linear, QuantSpec(weight_bits=4, act_bits=4)).train()
    x = torch.randn(shape)
    y = quantized(x)
    assert y.shape == (*shape[:-1], 8)
    assert quantized.act_quant.shift.shape == (16,)


@pytest.mark.parametrize("method", ["quantsr", "lsq", "dorefa", "pams"])
def test_gradients_reach_every_trainable_parameter(method):
    conv = nn.Conv2d(4, 6, 3, padding=1)
    quantized = QuantConv2d.from_float(conv, QuantSpec(method=method)).train()
    x = torch.randn(2, 4, 8, 8)
    quantized(x)
    quantized(x).square().mean().backward()
    for name, parameter in quantized.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_real_image_error_shrinks_with_more_bits():
    from skimage import data

    image = torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float() / 255
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 16, 3, padding=1)
    reference = conv(image)
    errors = {}
    for bits in (2, 4, 8):
        quantized = QuantConv2d.from_float(conv, QuantSpec(weight_bits=bits, act_bits=bits))
        quantized.train()(image)
        y = quantized.eval()(image)
        errors[bits] = ((y - reference).norm() / reference.norm()).item()
        assert not bool(quantized.act_quant.signed)  # image pixels are non-negative
    # LSQ's step initialisation (2 mean|x| / sqrt(Qp)) clips little at 8 bits: about 5 %.
    assert errors[2] > errors[4] > errors[8] and errors[8] < 0.06, errors


def test_quantizing_a_quantized_layer_is_refused():
    quantized = QuantConv2d.from_float(nn.Conv2d(2, 2, 1))
    with pytest.raises(ValueError, match="QuantConv2d is already quantized"):
        QuantConv2d.from_float(quantized)


def test_a_conv_subclass_with_its_own_forward_is_refused():
    same = timm.layers.Conv2dSame(3, 8, 3, stride=2)
    with pytest.raises(ValueError, match=r"Conv2dSame overrides Conv2d\.forward"):
        QuantConv2d.from_float(same)


def test_a_weight_normed_conv_is_refused():
    conv = nn.utils.parametrizations.weight_norm(nn.Conv2d(3, 3, 3))
    with pytest.raises(ValueError, match="parametrizations or pre-forward hooks"):
        QuantConv2d.from_float(conv)


def test_per_channel_is_refused_for_dorefa():
    with pytest.raises(ValueError, match="per_channel=True is not available with method='dorefa'"):
        QuantSpec(method="dorefa", per_channel=True)


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(
        ValueError, match="method must be one of 'cadyq', 'dorefa', 'lsq', 'pams', 'quantsr'"
    ):
        QuantSpec(method="lsq+")


def test_quantsr_options_are_refused_for_other_methods():
    with pytest.raises(ValueError, match="phi_k=1.0 is not available with method='lsq'"):
        QuantSpec(method="lsq", phi_k=1.0)


@pytest.mark.parametrize(("field", "value"), [("weight_bits", 1), ("act_bits", 4.5)])
def test_spec_names_the_bad_bits_argument(field, value):
    with pytest.raises(ValueError, match=field):
        QuantSpec(**{field: value})


def test_spec_round_trips_through_a_dict_and_refuses_unknown_keys():
    spec = QuantSpec(method="quantsr", weight_bits=2, act_bits=4, per_channel=True, phi_k=2.0)
    assert QuantSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match=r"unknown key\(s\) quantsr\.bitz; valid keys: method"):
        QuantSpec.from_dict({"bitz": 4}, where="quantsr.")


def test_quantized_layers_move_with_to():
    quantized = QuantConv2d.from_float(nn.Conv2d(3, 3, 3)).double()
    assert quantized.act_quant.step.dtype == torch.float64
    assert quantized.weight_quant.step.dtype == torch.float64


def test_one_table_names_the_float_quantized_and_frozen_type_of_each_layer():
    from qsr_plugin.export.frozen_layers import FrozenQuantConv2d, FrozenQuantLinear

    conv, linear = nn.Conv2d(3, 4, 3), nn.Linear(4, 2)
    for layer, quantized, frozen in [
        (conv, QuantConv2d, FrozenQuantConv2d),
        (linear, QuantLinear, FrozenQuantLinear),
    ]:
        types = layer_types(layer)
        assert (types.float, types.quantized, types.frozen) == (type(layer), quantized, frozen)
        assert layer_types(quantized.from_float(layer)) == types
    assert layer_types(timm.layers.Conv2dSame(3, 4, 3)).quantized is QuantConv2d
    with pytest.raises(TypeError, match="BatchNorm2d is not a Conv2d or Linear layer"):
        layer_types(nn.BatchNorm2d(4))
