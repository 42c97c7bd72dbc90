"""The quantized layers of a model as five tensors: packed codes and quantizer numbers.

Storing each quantizer's step, shift and flags as its own safetensors entry costs a header
line (about 120 bytes) per tensor, which for SwinIR_S is a fifth of a 4-bit file. Instead,
the quantized layers, taken in sorted name order, are stored as:

- ``qsr.weight_codes`` (uint8): each layer's weight codes packed with
  :func:`~qsr_plugin.export.packing.pack_signed`, one layer after the other, each starting on
  a byte boundary (a layer of n weights at b bits takes ``ceil(n * b / 8)`` bytes);
- ``qsr.weight_step`` (float32): the weight steps, one per layer or one per output channel;
- ``qsr.act_step`` (float32) and ``qsr.act_signed`` (bool): one per activation quantizer;
- ``qsr.act_shift`` (float32): the shifts tau of the activation quantizers that learn one,
  ``in_channels`` values each.

Float32 holds float16 and bfloat16 values exactly, so steps and shifts return bit for bit.
A layer whose weights (or activations) stay in float has no entry in the weight (or
activation) tables; its float weight is stored as an ordinary tensor. The quantizers' bit
widths and initialised flags are not stored: the bits come from the model's config, which
``load`` checks against the file, and a saved quantizer is always initialised.
"""

from __future__ import annotations

import torch
from torch import nn

from .packing import pack_signed, packed_size, unpack_signed
from .quantized_layers import quantized_layers, weight_codes

TABLE_NAMES = (
    "qsr.weight_codes",
    "qsr.weight_step",
    "qsr.act_step",
    "qsr.act_signed",
    "qsr.act_shift",
)


def _sorted_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return sorted(quantized_layers(model), key=lambda item: item[0])


def _flat32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().reshape(-1).to(device="cpu", dtype=torch.float32)


def _cat(parts: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    return torch.cat(parts) if parts else torch.zeros(0, dtype=dtype)


def pack_tables(model: nn.Module) -> tuple[dict[str, torch.Tensor], set[str]]:
    """The tables of ``model``'s quantized layers, and the state-dict keys they stand for."""
    codes, weight_steps, act_steps, act_signed, act_shifts = [], [], [], [], []
    covered: set[str] = set()
    for name, layer in _sorted_layers(model):
        if layer.weight_quant is not None:
            quantized = weight_codes(layer)
            codes.append(pack_signed(quantized.codes, quantized.bits))
            weight_steps.append(_flat32(quantized.step))
            covered.add(f"{name}.weight")
            covered.update(f"{name}.weight_quant.{key}" for key in layer.weight_quant.state_dict())
        act = layer.act_quant
        if act is not None:
            act_steps.append(_flat32(act.step))
            act_signed.append(torch.tensor([act.is_signed()]))
            if act.shift is not None:
                act_shifts.append(_flat32(act.shift))
            covered.update(f"{name}.act_quant.{key}" for key in act.state_dict())
    tables = {
        "qsr.weight_codes": _cat(codes, torch.uint8),
        "qsr.weight_step": _cat(weight_steps, torch.float32),
        "qsr.act_step": _cat(act_steps, torch.float32),
        "qsr.act_signed": _cat(act_signed, torch.bool),
        "qsr.act_shift": _cat(act_shifts, torch.float32),
    }
    return tables, covered


class _Reader:
    """Consumes a 1-D table from the front, checking that it holds enough values."""

    def __init__(self, name: str, table: torch.Tensor) -> None:
        self.name, self.table, self.position = name, table, 0

    def take(self, count: int) -> torch.Tensor:
        end = self.position + count
        if end > self.table.numel():
            raise ValueError(
                f"{self.name} holds {self.table.numel()} values, fewer than the model's "
                "quantized layers need; the file belongs to another architecture"
            )
        part = self.table[self.position : end]
        self.position = end
        return part

    def check_used_up(self) -> None:
        if self.position != self.table.numel():
            raise ValueError(
                f"{self.name} holds {self.table.numel()} values, more than the model's "
                f"quantized layers use ({self.position}); the file belongs to another architecture"
            )


def unpack_tables(tables: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """State-dict entries for ``model``'s quantized layers, rebuilt from the tables.

    Each quantized weight becomes ``codes * step`` in the model's weight dtype: the value
    the layer's weight quantizer computes from it is the same as before saving.

    Raises:
        ValueError: a table is missing or does not fit the model's quantized layers.
    """
    missing = [name for name in TABLE_NAMES if name not in tables]
    if missing:
        raise ValueError(f"the file lacks the tables {missing}; it was not written by save()")
    readers = {name: _Reader(name, tables[name]) for name in TABLE_NAMES}
    state: dict[str, torch.Tensor] = {}
    for name, layer in _sorted_layers(model):
        wq, act = layer.weight_quant, layer.act_quant
        if wq is not None:
            dtype, count = layer.weight.dtype, layer.weight.numel()
            packed = readers["qsr.weight_codes"].take(packed_size(count, wq.bits))
            codes = unpack_signed(packed.contiguous(), wq.bits, count).reshape(layer.weight.shape)
            step = readers["qsr.weight_step"].take(wq.step.numel()).reshape(wq.step.shape)
            step = step.to(wq.step.dtype)
            state[f"{name}.weight"] = codes.to(dtype) * step.to(dtype)
            state[f"{name}.weight_quant.step"] = step
            state[f"{name}.weight_quant.num_bits"] = wq.num_bits.new_tensor(wq.bits)
            state[f"{name}.weight_quant.initialized"] = torch.tensor(True)
        if act is not None:
            prefix = f"{name}.act_quant."
            step = readers["qsr.act_step"].take(1).reshape(act.step.shape)
            state[prefix + "step"] = step.to(act.step.dtype)
            state[prefix + "signed"] = readers["qsr.act_signed"].take(1).reshape(())
            state[prefix + "num_bits"] = act.num_bits.new_tensor(act.bits)
            state[prefix + "initialized"] = torch.tensor(True)
            if act.shift is not None:
                shift = readers["qsr.act_shift"].take(act.shift.numel())
                state[prefix + "shift"] = shift.reshape(act.shift.shape).to(act.shift.dtype)
    for reader in readers.values():
        reader.check_used_up()
    return state
