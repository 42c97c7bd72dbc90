"""``summary()``: what quantize() did to a model, as a readable report."""

from __future__ import annotations

from torch import nn

from .._wrappers import unwrap
from ..layers import COMPUTE_TYPES, is_quantized_layer
from ..quantizers import Quantizer
from .depth import depth_switchable_bodies
from .quantize import quantization_record


def _ranges(indices: list[int]) -> str:
    parts, start = [], None
    for i, index in enumerate(indices):
        if start is None:
            start = index
        if i + 1 == len(indices) or indices[i + 1] != index + 1:
            parts.append(str(start) if start == index else f"{start}-{index}")
            start = None
    return ",".join(parts)


def _layer_line(name: str, module: nn.Module, left_float: dict[str, str]) -> str:
    params = sum(p.numel() for p in (module.weight, module.bias) if p is not None)
    if is_quantized_layer(module):
        spec = module.spec
        how = f"{spec.method} w{spec.weight_bits}/a{spec.act_bits}"
    elif name in left_float:
        how = f"float ({left_float[name]})"
    else:
        how = "float"
    return f"  {name:<44} {type(module).__name__:<12} {params:>10,}  {how}"


def summary(model: nn.Module) -> str:
    """A report of a quantized model: analysis, body, depth variants, layers, parameters.

    Example:
        ``print(qsr_plugin.summary(model))``
    """
    model = unwrap(model)
    record = quantization_record(model)
    if record is None:
        raise ValueError(
            f"{type(model).__name__} was not quantized with qsr_plugin.quantize(); "
            "nothing to summarise"
        )
    lines = [f"qsr_plugin summary of {type(model).__name__}"]
    analysis = "torch.fx"
    if record.analysis_method == "hooks":
        analysis = f"forward hooks (torch.fx could not trace the model: {record.fx_error})"
    if record.leaf_classes:
        analysis += f"; traced as leaves: {', '.join(record.leaf_classes)}"
    lines.append(f"analysis: {analysis}")
    body = record.body
    lines.append(
        f"body: {body.path} ({body.depth} x {body.block_type})" if body else "body: none found"
    )
    for path, container in depth_switchable_bodies(model):
        grown = f", grown to {len(container.block_names)}" if container.grown_from else ""
        lines.append(f"depth variants of {path}{grown} (active: {container.active_depth}):")
        for depth in container.depth_variants:
            noun = "block" if depth == 1 else "blocks"
            lines.append(f"  {depth:>3} {noun}: {_ranges(container.plan()[depth])}")
    lines.append("layers (name, type, parameters, quantization):")
    first_name: dict[int, str] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if not isinstance(module, COMPUTE_TYPES):
            continue
        if id(module) in first_name:  # a tied layer: one module under two paths
            lines.append(f"  {name:<44} the same module as {first_name[id(module)]}")
            continue
        first_name[id(module)] = name
        lines.append(_layer_line(name, module, record.left_float))
    if record.functional_calls:
        lines.append("computed outside Conv2d/Linear layers, so kept in float (module: calls):")
        lines += [f"  {path}: {calls}" for path, calls in record.functional_calls.items()]
    total = sum(p.numel() for p in model.parameters())
    quantized_weights = sum(
        m.weight.numel() for m in model.modules() if is_quantized_layer(m) and m.weight_quant
    )
    quantizer_params = sum(
        p.numel() for m in model.modules() if isinstance(m, Quantizer) for p in m.parameters()
    )
    dqa_params = sum(
        p.numel() for _, c in depth_switchable_bodies(model) for p in c.parameters(recurse=False)
    )
    lines.append(
        f"parameters: {total:,} in all; {quantized_weights:,} quantized weights "
        f"({record.config.layer_spec().weight_bits} bits); {quantizer_params:,} quantizer "
        f"parameters; {dqa_params:,} shortcut and residual scales"
    )
    return "\n".join(lines)
