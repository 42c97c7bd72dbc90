"""``report()``: parameters, operations and file sizes of a quantized model (QuantSR Table 2).

Convention (QuantSR supplementary, section 1.3): a quantized layer counts ``b/32`` of its
full-precision parameters and operations. Here ``b`` is the weight bit width for the layer's
weight parameters (biases, quantizer steps and shifts, shortcut scales and every float layer
count in full), and ``max(weight bits, activation bits)`` for the layer's operations, so a
layer whose activations stay in float counts its operations in full. A CADyQ layer's
activation bits are the average it used on the images run inside
:func:`qsr_plugin.measure_bits` (its bit selector's parameters count as quantizer
parameters). Operations are multiply-accumulates of Conv2d and Linear layers (see
:mod:`qsr_plugin.cost_count`); the matrix products between activations (SwinIR's
``q @ k^T`` and ``attn @ v``), which ``quantize()`` leaves in float, are listed in their own
column at full cost, because the paper's figures leave them out.

Rows: the float model (the body's original blocks, every layer in float, no quantizer
parameters) and each depth variant of the quantized model (its blocks only). Reductions are
relative to the float row. The file sizes are real: :func:`qsr_plugin.save` of the quantized
model (all blocks, every variant) beside a float32 safetensors file of the float model's
parameters and buffers; buffers rebuilt by the architecture (SwinIR's attention masks and
position indices) are left out of both, as ``save`` leaves them out.
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import safetensors.torch
import torch
from torch import nn

from ._validation import FLOAT_BITS
from .cost_count import ForwardCost, count_forward
from .export.quantized_layers import quantized_layers, require_deployable, require_quantized
from .export.safetensors_io import save, unique_state
from .quantizers import CADyQActivationQuantizer, quantizers_of
from .rewrite.depth import depth_switchable_bodies
from .rewrite.input_size import fixed_input_size
from .rewrite.quantize import dequantize, quantization_record
from .rewrite.variants import use_depth, variant_depths

DEFAULT_INPUT_SIZE = (3, 256, 256)


@dataclass(frozen=True)
class EfficiencyRow:
    """One row of the report.

    Attributes:
        label: ``"float"`` or the quantization method.
        bits: ``"w/a"`` bit widths, e.g. ``"4/4"``.
        blocks: body blocks that run (None for a model without a body).
        params: parameters, quantized weights counted b/32.
        ops: Conv2d/Linear multiply-accumulates, quantized layers counted b/32.
        product_ops: multiply-accumulates of matrix products between activations (float).
    """

    label: str
    bits: str
    blocks: int | None
    params: float
    ops: float
    product_ops: float


@dataclass(frozen=True)
class FileSizes:
    """Real file sizes in bytes.

    Attributes:
        saved: ``qsr_plugin.save`` of the quantized model (every block of every variant).
        float32: safetensors file of the float model's parameters and buffers, float32.
        limit: :func:`b32_limit`: the model's numbers at b/32 (4 bytes each, b/8 per
            quantized weight), without a file header.
    """

    saved: int
    float32: int
    limit: int


@dataclass(frozen=True)
class EfficiencyReport:
    """The report of :func:`report`; ``str()`` gives it as Markdown."""

    model: str
    input_size: tuple[int, ...]
    rows: list[EfficiencyRow]
    files: FileSizes | None

    def to_dict(self) -> dict:
        """The report as plain data (JSON friendly)."""
        return asdict(self)

    def __str__(self) -> str:
        size = "x".join(map(str, self.input_size))
        reference = self.rows[0]
        lines = [
            f"Efficiency of {self.model}, input {size} (a quantized layer counts b/32: weight "
            "bits for params, max(weight, activation bits) for ops; ops = multiply-accumulates)",
            "",
            "| model | bits (w/a) | blocks | params (K) | Conv/Linear ops (G) | "
            "attention products (G) | total ops (G) |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for row in self.rows:
            blocks = "-" if row.blocks is None else str(row.blocks)
            total = row.ops + row.product_ops
            lines.append(
                f"| {row.label} | {row.bits} | {blocks} "
                f"| {row.params / 1e3:,.1f} ({_reduction(row.params, reference.params)}) "
                f"| {row.ops / 1e9:,.2f} ({_reduction(row.ops, reference.ops)}) "
                f"| {row.product_ops / 1e9:,.2f} "
                f"| {total / 1e9:,.2f} "
                f"({_reduction(total, reference.ops + reference.product_ops)}) |"
            )
        if self.files is not None:
            files = self.files
            lines += [
                "",
                f"saved file (qsr_plugin.save, all blocks): {files.saved:,} bytes = "
                f"{files.saved / files.float32:.3f} x the float32 file "
                f"({files.float32:,} bytes); b/32 limit {files.limit:,} bytes "
                f"(file / limit = {files.saved / files.limit:.3f})",
            ]
        return "\n".join(lines)


def _reduction(value: float, reference: float) -> str:
    if reference == 0 or value == reference:
        return "0%"
    return f"↓ {100 * (1 - value / reference):.1f}%"


def _bits_text(weight_bits: int, act_bits: float) -> str:
    if isinstance(act_bits, float):  # CADyQ: the measured average
        return f"{weight_bits}/{act_bits:.2f} (measured average)"
    return f"{weight_bits}/{act_bits}"


def _activation_bits(name: str, layer: nn.Module) -> float:
    """A layer's activation bits: its setting, or for CADyQ the average measured on images."""
    quantizer = layer.act_quant
    if not isinstance(quantizer, CADyQActivationQuantizer):
        return layer.spec.act_bits
    if quantizer.measured_bits is None:
        raise ValueError(
            f"report(): {name} uses method 'cadyq', whose activation bits depend on the "
            "input; measure them on the evaluation images first (with "
            "qsr_plugin.measure_bits(model): run the images), then call report()"
        )
    return quantizer.measured_bits


@dataclass(frozen=True)
class _LayerBits:
    """Each quantized layer's (weight, activation) bits and count of quantizer parameters."""

    bits: dict[str, tuple[int, int]]
    quantizer_params: dict[str, int]

    @classmethod
    def of(cls, model: nn.Module) -> _LayerBits:
        bits, quantizer_params = {}, {}
        for name, layer in quantized_layers(model):
            quantizers = [q for q in (layer.act_quant, layer.weight_quant) if q is not None]
            bits[name] = (
                FLOAT_BITS if layer.weight_quant is None else layer.spec.weight_bits,
                FLOAT_BITS if layer.act_quant is None else _activation_bits(name, layer),
            )
            quantizer_params[name] = sum(p.numel() for q in quantizers for p in q.parameters())
        return cls(bits, quantizer_params)

    def weighted(self, model: nn.Module, cost: ForwardCost) -> tuple[float, float]:
        """``(params, ops)`` of a pass of ``model`` counted with quantized layers at b/32.

        The shortcut and residual scales of depth-switchable bodies count in full (a body the
        model iterates instead of calling does not show up among the modules that ran).
        """
        dqa = {
            f"{path}.{name}": parameter.numel()
            for path, container in depth_switchable_bodies(model)
            for name, parameter in container.named_parameters(recurse=False)
        }
        params = 0.0
        for name, count in (cost.parameters | dqa).items():
            layer = name.removesuffix(".weight")
            weight_bits = (
                self.bits[layer][0]
                if name.endswith(".weight") and layer in self.bits
                else FLOAT_BITS
            )
            params += count * weight_bits / FLOAT_BITS
        params += sum(n for layer, n in self.quantizer_params.items() if layer in cost.modules_run)
        ops = 0.0
        for call in cost.layers:
            bits = max(self.bits.get(call.name, (FLOAT_BITS, FLOAT_BITS)))
            ops += call.macs * bits / FLOAT_BITS
        return params, ops

    def activation_bits(self, cost: ForwardCost, act_bits: int) -> float | int:
        """``act_bits``, or for CADyQ the measured bits averaged over the layers that ran."""
        measured = [
            self.bits[call.name][1]
            for call in cost.layers
            if call.name in self.bits and isinstance(self.bits[call.name][1], float)
        ]
        return sum(measured) / len(measured) if measured else act_bits


def b32_limit(model: nn.Module) -> int:
    """Bytes of ``model``'s parameters and buffers at b/32, without any file header.

    4 bytes per number and ``b/8`` per quantized weight, over what :func:`qsr_plugin.save`
    stores (each tensor once, no buffers rebuilt by the architecture); the quantizers' bit
    widths and flags and the depth plans of depth-switchable bodies (``membership``) are
    bookkeeping, not model numbers, and are left out.
    """
    bits = {
        f"{name}.weight": layer.spec.weight_bits
        for name, layer in quantized_layers(model)
        if layer.weight_quant is not None
    }
    flags = {
        f"{name}.{buffer}"
        for name, quantizer in quantizers_of(model)
        for buffer, _ in quantizer.named_buffers(recurse=False)
    } | {f"{path}.membership" for path, _ in depth_switchable_bodies(model)}
    total = sum(
        tensor.numel() * (bits[key] / 8 if key in bits else 4)
        for key, tensor in unique_state(model)[0].items()
        if key not in flags
    )
    return round(total)


def _file_sizes(model: nn.Module, float_model: nn.Module, folder: Path) -> FileSizes:
    saved = save(model, folder / "quantized.safetensors")
    tensors = {
        key: tensor.detach()
        .to("cpu", torch.float32 if tensor.is_floating_point() else None)
        .clone()
        for key, tensor in unique_state(float_model)[0].items()
    }
    float_path = folder / "float32.safetensors"
    safetensors.torch.save_file(tensors, str(float_path))
    return FileSizes(saved.stat().st_size, float_path.stat().st_size, b32_limit(model))


def _count(model: nn.Module, input_size: tuple[int, ...], name: str) -> ForwardCost:
    try:
        return count_forward(model, input_size)
    except Exception as error:
        raise ValueError(
            f"report(): {name} did not run on an input of size {'x'.join(map(str, input_size))} "
            f"({type(error).__name__}: {error}); pass input_size=(C, H, W) that it accepts"
        ) from error


def report(
    model: nn.Module, input_size: tuple[int, ...] | None = None, saved_file: bool = True
) -> EfficiencyReport:
    """Parameters and operations per depth variant and for the float model (Table 2 layout).

    Args:
        model: a model quantized with :func:`qsr_plugin.quantize`.
        input_size: one input's shape without the batch dimension; None for the size a
            fixed-size model accepts (timm's ``patch_embed.img_size``), else 3x256x256 (the
            paper's low-resolution input).
        saved_file: also :func:`qsr_plugin.save` the model to a temporary folder and report
            the real file size beside a float32 safetensors file of the float model (needs
            a calibrated or trained model).

    Returns:
        The report; ``print(report)`` shows it as a Markdown table.

    Raises:
        ValueError: the model was never quantized, ``input_size`` is not a tuple of
            positive ints, or the model does not run on it; a CADyQ model with
            ``saved_file`` (it has no fixed integer form) or whose bits were never
            measured (:func:`qsr_plugin.measure_bits`).
        RuntimeError: with ``saved_file``, a quantizer was never initialised (pass
            ``saved_file=False`` to count only).

    Example:
        ``print(qsr_plugin.report(model, input_size=(3, 256, 256)))``
    """
    model = require_quantized(model, "report()")
    if input_size is None:
        input_size = fixed_input_size(model) or DEFAULT_INPUT_SIZE
    if not (
        isinstance(input_size, tuple | list)
        and input_size
        and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in input_size)
    ):
        raise ValueError(f"input_size must be a tuple of positive ints, got {input_size!r}")
    input_size = tuple(input_size)
    if saved_file:
        require_deployable(model, "report() (pass saved_file=False to count only)")
    record = quantization_record(model)
    spec = record.config.layer_spec()
    label = spec.method
    layer_bits = _LayerBits.of(model)
    counted = dequantize(copy.deepcopy(model), bodies=False).eval()  # every depth, in float
    rows = []
    for depth in variant_depths(counted):
        if depth is None:
            cost = _count(counted, input_size, type(model).__name__)
            blocks = record.body.depth if record.body else None
        else:
            with use_depth(counted, depth):
                cost = _count(counted, input_size, type(model).__name__)
            blocks = depth
        params, ops = layer_bits.weighted(counted, cost)
        bits = _bits_text(spec.weight_bits, layer_bits.activation_bits(cost, spec.act_bits))
        rows.append(EfficiencyRow(label, bits, blocks, params, ops, float(cost.product_macs)))
    float_model = dequantize(copy.deepcopy(model)).eval()
    float_cost = _count(float_model, input_size, type(model).__name__)
    float_row = EfficiencyRow(
        "float",
        _bits_text(FLOAT_BITS, FLOAT_BITS),
        record.body.depth if record.body else None,
        float(sum(float_cost.parameters.values())),
        float(sum(call.macs for call in float_cost.layers)),
        float(float_cost.product_macs),
    )
    files = None
    if saved_file:
        with tempfile.TemporaryDirectory() as folder:
            files = _file_sizes(model, float_model, Path(folder))
    return EfficiencyReport(type(model).__name__, input_size, [float_row, *rows], files)
