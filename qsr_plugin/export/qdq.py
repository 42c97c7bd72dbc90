"""ONNX QuantizeLinear/DequantizeLinear nodes emitted from a frozen model's forward pass.

During :func:`qsr_plugin.export_onnx` the frozen layers call these functions instead of doing
the arithmetic, and ``torch.onnx.ops.symbolic`` puts the ONNX operators into the graph.

Storage types (opset 21): a quantizer of b bits uses the narrowest ONNX integer type that
holds its codes, INT4/UINT4 for b <= 4 and INT8/UINT8 for 5 <= b <= 8. At 4 and 8 bits the
type's saturation is exactly the code range. At 2, 3, 5, 6 and 7 bits a Clip to
``[Qn * s, Qp * s]`` comes first, so QuantizeLinear's rounding lands inside the b-bit range:
2-bit codes travel as INT4/UINT4 values in ``[-2, 1]`` / ``[0, 3]``. (ONNX has INT2 from
opset 25, and onnxruntime runs it, but ``torch.onnx.ops.symbolic`` in torch 2.14 only names
ONNX types up to FLOAT4E2M1 (23), so INT2 nodes cannot be emitted from PyTorch.)
"""

from __future__ import annotations

import torch

ONNX_UINT8, ONNX_INT8, ONNX_UINT4, ONNX_INT4 = 2, 3, 21, 22
QDQ_OPSET = 21


def storage_type(bits: int, signed: bool) -> tuple[int, int]:
    """``(ONNX element type, its width in bits)`` that carries ``bits``-bit codes."""
    if bits <= 4:
        return (ONNX_INT4 if signed else ONNX_UINT4), 4
    return (ONNX_INT8 if signed else ONNX_UINT8), 8


def quantize_dequantize(
    x: torch.Tensor,
    step: torch.Tensor,
    bits: int,
    signed: bool,
    q_min: torch.Tensor,
    q_max: torch.Tensor,
) -> torch.Tensor:
    """A QuantizeLinear/DequantizeLinear pair (with a Clip below the storage width).

    ``q_min`` and ``q_max`` are the code range ``Qn``, ``Qp`` as 0-dim tensors.
    """
    element_type, width = storage_type(bits, signed)
    if bits < width:
        x = torch.clamp(x, q_min * step, q_max * step)
    codes = torch.onnx.ops.symbolic(
        "QuantizeLinear",
        (x, step),
        {"output_dtype": element_type},
        dtype=element_type,
        shape=x.shape,
        version=QDQ_OPSET,
    )
    return torch.onnx.ops.symbolic(
        "DequantizeLinear", (codes, step), {}, dtype=x.dtype, shape=x.shape, version=QDQ_OPSET
    )


def dequantize_weight(codes: torch.Tensor, step: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A DequantizeLinear node turning int8 weight codes into the float weight.

    ``step`` is 0-dim (per tensor) or has one value per output channel (axis 0).
    """
    per_channel = step.dim() > 0
    scale = step.reshape(-1) if per_channel else step
    return torch.onnx.ops.symbolic(
        "DequantizeLinear",
        (codes, scale),
        {"axis": 0} if per_channel else {},
        dtype=dtype,
        shape=codes.shape,
        version=QDQ_OPSET,
    )
