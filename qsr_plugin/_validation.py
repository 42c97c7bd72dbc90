"""Argument checks shared by the configs and the quantizers."""

from __future__ import annotations

FLOAT_BITS = 32
QUANT_BITS = range(2, 9)


def check_bits(value: object, argument: str) -> int:
    """Return ``value`` if it is a valid bit width (an int in 2..8, or 32 for float).

    Raises:
        ValueError: naming ``argument`` and the allowed values.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(
            f"{argument} must be an int in 2..8 (or 32 to keep that side in float), "
            f"got {value!r} of type {type(value).__name__}"
        )
    if value != FLOAT_BITS and value not in QUANT_BITS:
        raise ValueError(
            f"{argument} must be in 2..8 (or 32 to keep that side in float), got {value}"
        )
    return value
