"""Bit-packing of b-bit integer codes (b in 2..8) into bytes, and back.

Layout: the codes, in row-major order, form one little-endian bit stream. Code ``i`` occupies
stream bits ``i*b`` to ``i*b + b - 1``, least significant bit first, and stream bit ``j`` is bit
``j % 8`` (counting from the least significant) of byte ``j // 8``. The last byte is padded
with zero bits. So:

- 2 bits: four codes per byte, the first in bits 0-1;
- 4 bits: two codes per byte, the first in the low nibble (as ONNX packs INT4);
- 8 bits: one code per byte;
- 3, 5, 6 and 7 bits: codes straddle byte boundaries; eight codes fill exactly ``b`` bytes
  (6 bits: four codes in three bytes). For example, 3-bit codes 1, 2, 3 give the stream
  ``100 010 110`` (bits 0..8), i.e. the bytes ``0b11010001`` and ``0b00000000``.

A field holds an unsigned value in ``[0, 2^b - 1]``; signed codes in ``[-2^(b-1), 2^(b-1) - 1]``
are stored as their b-bit two's complement (:func:`pack_signed` / :func:`unpack_signed`).
"""

from __future__ import annotations

import math

import torch

from .._validation import check_bits


def packed_size(count: int, bits: int) -> int:
    """Bytes that ``count`` codes of ``bits`` bits take once packed."""
    return math.ceil(count * check_bits(bits, "bits", allow_float=False) / 8)


def pack(fields: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned ``bits``-bit values into a 1-D uint8 tensor (see the module docstring).

    Args:
        fields: integer tensor of any shape with values in ``[0, 2^bits - 1]``.
        bits: field width, 2..8.

    Returns:
        ``packed_size(fields.numel(), bits)`` bytes.

    Raises:
        ValueError: bad ``bits``, a non-integer tensor, or a value out of range.

    Example:
        >>> pack(torch.tensor([1, 2, 3, 0]), 2)
        tensor([57], dtype=torch.uint8)
    """
    check_bits(bits, "bits", allow_float=False)
    if fields.dtype.is_floating_point or fields.dtype.is_complex or fields.dtype == torch.bool:
        raise ValueError(f"pack() needs an integer tensor, got dtype {fields.dtype}")
    flat = fields.detach().reshape(-1).cpu()
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= 2**bits):
        raise ValueError(
            f"pack(): values must lie in [0, {2**bits - 1}] for {bits} bits, got "
            f"[{int(flat.min())}, {int(flat.max())}]"
        )
    positions = torch.arange(bits, dtype=torch.int16)
    stream = ((flat.to(torch.int16).unsqueeze(1) >> positions) & 1).reshape(-1)
    padding = (-stream.numel()) % 8
    if padding:
        stream = torch.cat([stream, stream.new_zeros(padding)])
    weights = torch.arange(8, dtype=torch.int16)
    return (stream.reshape(-1, 8) << weights).sum(dim=1).to(torch.uint8)


def unpack(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """The first ``count`` unsigned ``bits``-bit values of ``packed``, as a 1-D uint8 tensor.

    Raises:
        ValueError: bad ``bits``, a tensor that is not 1-D uint8, or a length that does not
            match ``count`` codes.

    Example:
        >>> unpack(torch.tensor([57], dtype=torch.uint8), 2, 4)
        tensor([1, 2, 3, 0], dtype=torch.uint8)
    """
    check_bits(bits, "bits", allow_float=False)
    if packed.dtype != torch.uint8 or packed.dim() != 1:
        raise ValueError(
            f"unpack() needs a 1-D uint8 tensor, got {packed.dtype} of shape {tuple(packed.shape)}"
        )
    expected = packed_size(count, bits)
    if packed.numel() != expected:
        raise ValueError(
            f"unpack(): {count} codes of {bits} bits take {expected} bytes, got "
            f"{packed.numel()}; the data is truncated or belongs to another tensor"
        )
    positions = torch.arange(8, dtype=torch.int16)
    stream = ((packed.cpu().to(torch.int16).unsqueeze(1) >> positions) & 1).reshape(-1)
    fields = stream[: count * bits].reshape(count, bits)
    weights = torch.arange(bits, dtype=torch.int16)
    return (fields << weights).sum(dim=1).to(torch.uint8)


def pack_signed(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack signed codes in ``[-2^(bits-1), 2^(bits-1) - 1]`` as b-bit two's complement.

    Example:
        >>> unpack_signed(pack_signed(torch.tensor([-2, -1, 0, 1]), 2), 2, 4)
        tensor([-2, -1,  0,  1], dtype=torch.int8)
    """
    check_bits(bits, "bits", allow_float=False)
    if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
        raise ValueError(f"pack_signed() needs an integer tensor, got dtype {codes.dtype}")
    flat = codes.detach().reshape(-1).cpu().to(torch.int16)
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    if flat.numel() and (int(flat.min()) < low or int(flat.max()) > high):
        raise ValueError(
            f"pack_signed(): codes must lie in [{low}, {high}] for {bits} bits, got "
            f"[{int(flat.min())}, {int(flat.max())}]"
        )
    return pack(flat & (2**bits - 1), bits)


def unpack_signed(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_signed`: ``count`` signed codes as a 1-D int8 tensor."""
    fields = unpack(packed, bits, count).to(torch.int16)
    sign = (fields >> (bits - 1)) & 1
    return (fields - (sign << bits)).to(torch.int8)
