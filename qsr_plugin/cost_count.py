"""Parameters and multiply-accumulates of one forward pass, counted without computing.

The model runs once under ``FakeTensorMode`` (tensors carry shapes, no data), so a 256x256
forward of SwinIR costs a second or two whatever its FLOPs. Counted:

- every Conv2d call: ``output elements x in_channels / groups x kernel height x width`` MACs;
- every Linear call: ``output elements x in_features`` MACs;
- every other matrix product of the forward pass (``mm``, ``addmm``, ``bmm``, ``baddbmm``
  and the fused scaled-dot-product attention kernels, issued outside Conv2d/Linear modules):
  the products between activations, such as ``q @ k^T`` and ``attn @ v`` in SwinIR's
  WindowAttention;
- the parameters of every module that ran (each tensor once).

Element-wise operations, normalisation, softmax, pixel shuffle and interpolation are not
counted, as in the paper's tables. One multiply-accumulate counts as one operation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from .layers import COMPUTE_TYPES

_aten = torch.ops.aten
PRODUCT_OPS = {_aten.mm.default, _aten.addmm.default, _aten.bmm.default, _aten.baddbmm.default}
# Fused scaled-dot-product attention kernels; their first three arguments are q, k and v.
ATTENTION_OPS = {
    _aten._scaled_dot_product_flash_attention_for_cpu.default,
    _aten._scaled_dot_product_flash_attention.default,
    _aten._scaled_dot_product_efficient_attention.default,
    _aten._scaled_dot_product_cudnn_attention.default,
}


@dataclass(frozen=True)
class LayerCall:
    """One Conv2d or Linear call: its qualified name and multiply-accumulates."""

    name: str
    macs: int


@dataclass
class ForwardCost:
    """What one forward pass used.

    Attributes:
        layers: every Conv2d/Linear call, in call order.
        product_macs: MACs of the matrix products outside Conv2d/Linear (attention).
        parameters: ``{qualified parameter name: number of elements}`` of the modules
            that ran, each tensor once.
        modules_run: qualified names of the modules that ran.
    """

    layers: list[LayerCall] = field(default_factory=list)
    product_macs: int = 0
    parameters: dict[str, int] = field(default_factory=dict)
    modules_run: set[str] = field(default_factory=set)


def _product_macs(func, args) -> int:
    if func in ATTENTION_OPS:  # q @ k^T and attn @ v
        query, key, value = args[:3]
        batch = query.numel() // (query.shape[-2] * query.shape[-1])
        return batch * query.shape[-2] * key.shape[-2] * (query.shape[-1] + value.shape[-1])
    if func in (_aten.mm.default, _aten.bmm.default):
        a, b = args[0], args[1]
    else:  # addmm / baddbmm: (input, a, b)
        a, b = args[1], args[2]
    batch = a.shape[0] if a.dim() == 3 else 1
    return batch * a.shape[-2] * a.shape[-1] * b.shape[-1]


class _ProductCounter(TorchDispatchMode):
    """Adds up the MACs of matrix products issued while no Conv2d/Linear is running."""

    def __init__(self) -> None:
        super().__init__()
        self.inside_layer = 0
        self.macs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if (func in PRODUCT_OPS or func in ATTENTION_OPS) and not self.inside_layer:
            self.macs += _product_macs(func, args)
        return func(*args, **(kwargs or {}))


def _layer_macs(module: nn.Module, output: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        kernel_h, kernel_w = module.kernel_size
        return output.numel() * (module.in_channels // module.groups) * kernel_h * kernel_w
    return output.numel() * module.in_features


def count_forward(model: nn.Module, input_size: tuple[int, ...]) -> ForwardCost:
    """Count one forward pass of ``model`` on a batch of one input of ``input_size``.

    Quantizers cannot run on fake tensors; pass a model whose layers are plain Conv2d and
    Linear (the report counts a float copy of the quantized model).

    Args:
        model: the model, in the mode it should be counted in (eval for inference).
        input_size: the input's shape without the batch dimension, e.g. ``(3, 256, 256)``.

    Example:
        >>> cost = count_forward(nn.Conv2d(3, 8, 3, padding=1), (3, 16, 16))
        >>> cost.layers[0].macs == 16 * 16 * 8 * 3 * 9
        True
    """
    cost = ForwardCost()
    counter = _ProductCounter()
    names = {module: name for name, module in model.named_modules()}
    handles = []

    def before(module, args):
        cost.modules_run.add(names[module])
        if isinstance(module, COMPUTE_TYPES):
            counter.inside_layer += 1

    def after(module, args, output):
        counter.inside_layer -= 1
        macs = _layer_macs(module, output)
        cost.layers.append(LayerCall(names[module], macs))

    for module in names:
        handles.append(module.register_forward_pre_hook(before))
        if isinstance(module, COMPUTE_TYPES):
            handles.append(module.register_forward_hook(after))
    try:
        reference = next(model.parameters(), None)
        device = reference.device if reference is not None else None
        with torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True), counter:
            model(torch.empty(1, *input_size, device=device))
    finally:
        for handle in handles:
            handle.remove()
    cost.product_macs = counter.macs
    seen: set[int] = set()
    for name, module in model.named_modules():
        if name not in cost.modules_run:
            continue
        for parameter_name, parameter in module.named_parameters(recurse=False):
            if id(parameter) not in seen:
                seen.add(id(parameter))
                cost.parameters[f"{name}.{parameter_name}" if name else parameter_name] = (
                    parameter.numel()
                )
    return cost
