"""PyTorch's own QAT (``torch.ao.quantization`` FX graph mode) on the same body layers.

``prepare_qat_fx`` swaps each named layer for its QAT version (weight fake-quantized, per
tensor, symmetric) and inserts activation fake-quantizers (per tensor, affine, moving-
average min/max observers) where its static quantization needs them: at the input of each
quantized layer and at its output (torch.ao models integer-in, integer-out kernels).
Conv+ReLU pairs are fused first, so the ReLU output is what gets quantized. Models with
data-dependent Python control flow (SwinIR) cannot be traced and are refused by
``prepare_qat_fx`` itself.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn


def fake_quant_qconfig(bits: int):
    """A QAT ``QConfig`` with ``bits``-bit fake-quant ranges (activations and weights)."""
    from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver, QConfig

    activation = FakeQuantize.with_args(
        observer=MovingAverageMinMaxObserver,
        quant_min=0,
        quant_max=2**bits - 1,
        dtype=torch.quint8,
        qscheme=torch.per_tensor_affine,
    )
    weight = FakeQuantize.with_args(
        observer=MovingAverageMinMaxObserver,
        quant_min=-(2 ** (bits - 1)),
        quant_max=2 ** (bits - 1) - 1,
        dtype=torch.qint8,
        qscheme=torch.per_tensor_symmetric,
    )
    return QConfig(activation=activation, weight=weight)


def prepare_torch_ao(
    model: nn.Module, layer_names: list[str], bits: int, example_input: torch.Tensor
) -> nn.Module:
    """A QAT-prepared ``GraphModule`` of ``model`` quantizing ``layer_names`` at ``bits``.

    ``model`` is copied, not changed. Raises what ``prepare_qat_fx`` raises (e.g. a
    ``TraceError`` for models torch.fx cannot trace).

    Example:
        ``prepare_torch_ao(msrresnet, ["body.0.conv1", ...], 4, torch.rand(1, 3, 48, 48))``
    """
    from torch.ao.quantization import QConfigMapping
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    if not layer_names:
        raise ValueError("layer_names is empty; name the layers to quantize")
    qconfig = fake_quant_qconfig(bits)
    mapping = QConfigMapping()
    for name in layer_names:
        mapping.set_module_name(name, qconfig)
    with warnings.catch_warnings():  # the FX API's deprecation notice, printed on every call
        warnings.simplefilter("ignore", DeprecationWarning)
        return prepare_qat_fx(copy.deepcopy(model).train(), mapping, (example_input,))
