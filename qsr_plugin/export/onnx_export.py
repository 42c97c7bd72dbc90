"""``export_onnx()``: a frozen model as an ONNX graph that ONNX Runtime runs on integer kernels.

``kernels="integer"`` (the default): each quantized layer's input becomes UINT8 codes
(``Add(tau)``, a Clip below 8 bits, ``QuantizeLinear``) and the layer an integer product of
those codes and its int8 weight codes (see :mod:`._integer_ops`):

* a Conv2d whose output reaches the next quantized layer's input quantizer alone (directly or
  through a ReLU, as in every residual block's ``conv1 -> ReLU -> conv2``) runs as
  ``QLinearConv`` writing that quantizer's codes: the model rounds there anyway, so this is
  exact up to float rounding and the int32 bias (found by ``torch.fx``, see
  :mod:`._integer_plan`);
* every other Conv2d runs as ``ConvInteger`` with int32 accumulation and one float rescale
  (exact; ONNX Runtime 1.32's ConvInteger is slower than its float Conv on an x86 CPU, see
  docs/deployment.md); ``requantize=True`` runs them as ``QLinearConv`` onto an 8-bit grid
  measured on the example input instead (faster; changes the output);
* a Linear runs as ``MatMulInteger`` plus the rescale, which ONNX Runtime fuses into its
  ``MatMulIntegerToFloat`` kernel. SwinIR's attention products (``q @ k^T``, ``attn @ v``)
  stay float.

``kernels="float"``: QuantizeLinear/DequantizeLinear pairs around the float kernels, for
runtimes without integer kernels: each input through ``Add(tau)``, QuantizeLinear/
DequantizeLinear (INT4/UINT4 at 2-4 bits, INT8/UINT8 at 5-8), each weight through
DequantizeLinear from INT4/INT8 codes (see :mod:`qsr_plugin.export.qdq`).

Everything else is the model's float graph as ``torch.onnx.export`` (dynamo) writes it, with
identical constants stored once (SwinIR repeats its attention mask in every shifted block) and
without the exporter's per-node debug notes (stack traces with local file paths).

onnxruntime computes LayerNorm, softmax and GELU with other kernels than PyTorch; where such a
difference of about 1e-7 moves an activation across a rounding boundary, one code changes and
the output moves by about that step's effect (measured in docs/deployment.md). The tests'
tolerance: at least 98% of the output values within 1e-4 of PyTorch's, all within 0.05.

Requires the optional dependencies ``onnx`` and ``onnxscript`` (``pip install
'qsr-plugin[onnx]'``, which also brings ``onnxruntime`` to run the result).
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from .._files import write_atomically
from ..rewrite.quantize import quantization_record
from ._integer_ops import RequantizedOutput, bias_rounding_error
from ._integer_plan import fused_convolutions
from .freeze import frozen_record
from .frozen_layers import (
    EXPORT_KERNELS,
    FrozenActivationQuantizer,
    FrozenQuantConv2d,
    is_frozen_layer,
)
from .qdq import QDQ_OPSET

INT4_TYPES = {"INT4", "UINT4"}
# A convolution writes the next layer's codes (QLinearConv) only where rounding its bias to
# int32 moves the value before that layer's rounding by at most this fraction of a step: a
# code can then change only where the value lies that close to a rounding boundary (trained
# 64-channel MSRResNet blocks measure 2e-3 to 3.5e-3; a fresh 8-channel conv 5e-2).
FUSED_BIAS_TOLERANCE = 5e-3


def _require_frozen(model: nn.Module) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"export_onnx() needs a torch.nn.Module, got {type(model).__name__}")
    if frozen_record(model) is not None:
        return
    if quantization_record(model) is not None:
        raise ValueError(
            f"export_onnx(): {type(model).__name__} is a quantized training model; export "
            "its inference form: qsr_plugin.export_onnx(qsr_plugin.freeze(model, depth=k), ...)"
        )
    raise ValueError(
        f"export_onnx(): {type(model).__name__} was never quantized; call "
        "qsr_plugin.quantize(model, ...), calibrate or train it, then qsr_plugin.freeze(model)"
    )


def _import_onnx():
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch.onnx.export(dynamo=True) needs it)
    except ImportError as error:
        raise ImportError(
            f"export_onnx() needs the optional dependencies onnx and onnxscript ({error}); "
            "install them with: pip install 'qsr-plugin[onnx]'"
        ) from error
    return onnx


def _require_integer_ready(model: nn.Module) -> None:
    """Integer kernels need integer codes on both operands of every quantized layer."""
    float_inputs = [
        n for n, m in model.named_modules() if is_frozen_layer(m) and m.input_quant is None
    ]
    float_weights = [
        n for n, m in model.named_modules() if is_frozen_layer(m) and m.weight_codes is None
    ]
    padded = [
        n
        for n, m in model.named_modules()
        if is_frozen_layer(m) and isinstance(m, nn.Conv2d) and m.padding_mode != "zeros"
    ]
    for layers, why in (
        (float_inputs, "float activations (act_bits=32)"),
        (float_weights, "float weights (weight_bits=32)"),
        (padded, "a padding mode other than zeros"),
    ):
        if layers:
            raise ValueError(
                f"export_onnx(kernels='integer'): {', '.join(layers)} "
                f"{'has' if len(layers) == 1 else 'have'} {why}, which integer kernels cannot "
                "take; export with kernels='float' (QuantizeLinear/DequantizeLinear around "
                "float kernels), or quantize these layers"
            )


def _require_input_shape(model: nn.Module, example_input) -> None:
    if not isinstance(example_input, torch.Tensor):
        raise TypeError(
            "export_onnx(): example_input must be a torch.Tensor, got "
            f"{type(example_input).__name__}"
        )
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    channels = "C" if first_conv is None else first_conv.in_channels
    if example_input.dim() != 4 or (
        first_conv is not None and example_input.shape[1] != first_conv.in_channels
    ):
        raise ValueError(
            f"export_onnx(): example_input has shape {tuple(example_input.shape)}; "
            f"{type(model).__name__} takes images of shape (N, {channels}, H, W)"
        )


def _requantized_grids(model, names, example_input) -> dict[str, RequantizedOutput]:
    """8-bit output grids for the convolutions ``names``: ``max|y| / 127`` on the example."""
    peaks: dict[str, torch.Tensor] = {}
    hooks = [
        model.get_submodule(name).register_forward_hook(
            lambda _m, _i, y, name=name: peaks.__setitem__(
                name, torch.maximum(peaks.get(name, y.new_zeros(())), y.detach().abs().max())
            )
        )
        for name in names
    ]
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for hook in hooks:
            hook.remove()
    return {
        name: RequantizedOutput(torch.clamp(peak, min=1e-8) / 127) for name, peak in peaks.items()
    }


def _output_grids(model, kernels, requantize, example_input) -> dict:
    """The output grid of each frozen convolution that runs as QLinearConv, and the input
    quantizers that receive codes written by a convolution (with the route)."""
    if kernels != "integer":
        return {}, {}
    plan = {
        producer: (model.get_submodule(consumer).input_quant, route)
        for producer, (consumer, route) in fused_convolutions(model).items()
    }
    plan = {  # fused only where the int32 bias cannot move a code (see FUSED_BIAS_TOLERANCE)
        producer: (quantizer, route)
        for producer, (quantizer, route) in plan.items()
        if bias_rounding_error(model.get_submodule(producer), quantizer) <= FUSED_BIAS_TOLERANCE
    }
    grids = {producer: quantizer for producer, (quantizer, _) in plan.items()}
    fed = {quantizer: route for quantizer, route in plan.values()}
    if requantize:
        others = [
            name
            for name, m in model.named_modules()
            if isinstance(m, FrozenQuantConv2d) and name not in grids
        ]
        grids.update(_requantized_grids(model, others, example_input))
    return grids, fed


@contextlib.contextmanager
def _exporting(model, kernels, requantize, example_input) -> Iterator[None]:
    """Switch every frozen module to emit ``kernels``' ONNX nodes, then back."""
    switches = [
        m for m in model.modules() if is_frozen_layer(m) or isinstance(m, FrozenActivationQuantizer)
    ]
    grids, fed = _output_grids(model, kernels, requantize, example_input)
    for module in switches:
        module.export_kernels = kernels
    for name, grid in grids.items():
        model.get_submodule(name).output_grid = grid
    for quantizer, route in fed.items():
        quantizer.fed_codes = route
    try:
        yield
    finally:
        for module in switches:
            module.export_kernels = None
        for name in grids:
            model.get_submodule(name).output_grid = None
        for quantizer in fed:
            quantizer.fed_codes = None


def _narrow_weight_codes(onnx, graph, bits: dict[str, int]) -> None:
    """Store the int8 weight codes of layers of at most 4 bits as INT4 initializers."""
    import ml_dtypes  # an onnx dependency

    by_name = {init.name: init for init in graph.initializer}
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in by_name:
            continue
        initializer = by_name[node.input[0]]
        layer = next((n for n in bits if initializer.name.startswith(n + ".weight_codes")), None)
        if layer is None or bits[layer] > 4 or initializer.data_type != onnx.TensorProto.INT8:
            continue
        values = onnx.numpy_helper.to_array(initializer).astype(ml_dtypes.int4)
        initializer.CopyFrom(onnx.numpy_helper.from_array(values, initializer.name))


def _share_identical_initializers(onnx, graph) -> None:
    """Keep one copy of initializers with identical contents (SwinIR's per-block attention
    masks and position biases are the same constants in every block)."""
    if any(a.type in (a.GRAPH, a.GRAPHS) for n in graph.node for a in n.attribute):
        return  # names may also be used inside subgraphs
    first: dict[tuple, str] = {}
    renamed: dict[str, str] = {}
    kept = []
    for initializer in graph.initializer:
        array = onnx.numpy_helper.to_array(initializer)
        key = (initializer.data_type, tuple(initializer.dims), array.tobytes())
        if key in first:
            renamed[initializer.name] = first[key]
        else:
            first[key] = initializer.name
            kept.append(initializer)
    if not renamed:
        return
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name in renamed:
                node.input[index] = renamed[name]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    example_input: torch.Tensor,
    *,
    kernels: str = "integer",
    requantize: bool = False,
    opset: int = QDQ_OPSET,
) -> Path:
    """Write a frozen model as an ONNX file (integer kernels by default; see the module doc).

    The graph is traced for ``example_input``'s shape (SwinIR bakes its attention masks for
    that size). The file is written atomically.

    Args:
        model: a model made by :func:`qsr_plugin.freeze`.
        path: the ``.onnx`` file to write; its directory must exist.
        example_input: an input batch ``(N, C, H, W)`` of the shape the graph will take.
        kernels: ``"integer"`` (integer convolutions and matrix products) or ``"float"``
            (QuantizeLinear/DequantizeLinear around float kernels).
        requantize: with integer kernels, also run the convolutions whose output the model
            keeps in float as QLinearConv onto an 8-bit grid (``max|y| / 127`` on
            ``example_input``; larger outputs saturate). Faster, not exact: opt in.
        opset: ONNX opset, 21 or above (INT4 QuantizeLinear needs 21).

    Returns:
        ``path`` as a Path.

    Raises:
        ValueError: the model is not frozen (never quantized, or not frozen yet); with
            integer kernels, a layer with float activations or weights or a non-zero padding
            mode (the message names the layers); an example input that is not
            ``(N, C, H, W)`` with the model's channels; an unknown ``kernels``; the opset
            is below 21.
        ImportError: onnx or onnxscript is not installed.

    Example:
        ``qsr_plugin.export_onnx(qsr_plugin.freeze(model, depth=4), "sr.onnx", lr)``
    """
    _require_frozen(model)
    if kernels not in EXPORT_KERNELS:
        raise ValueError(f"kernels must be one of {EXPORT_KERNELS}, got {kernels!r}")
    _require_input_shape(model, example_input)
    if kernels == "integer":
        _require_integer_ready(model)
    elif requantize:
        raise ValueError("requantize=True needs kernels='integer'")
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < QDQ_OPSET:
        raise ValueError(
            f"opset must be an int >= {QDQ_OPSET} (INT4 QuantizeLinear), got {opset!r}"
        )
    onnx = _import_onnx()
    bits = {name: m.weight_bits for name, m in model.named_modules() if is_frozen_layer(m)}
    log = io.StringIO()
    with (
        _exporting(model, kernels, requantize, example_input),
        torch.no_grad(),
        contextlib.redirect_stdout(log),
    ):
        program = torch.onnx.export(
            model, (example_input,), opset_version=opset, dynamo=True, external_data=False
        )
    proto = program.model_proto
    if kernels == "float":
        _narrow_weight_codes(onnx, proto.graph, bits)
    _share_identical_initializers(onnx, proto.graph)
    for node in proto.graph.node:  # the exporter's debug notes: stack traces, local paths
        del node.metadata_props[:]
    onnx.checker.check_model(proto)
    return write_atomically(path, proto.SerializeToString())
