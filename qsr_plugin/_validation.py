"""Argument checks shared by the configs, the quantizers and the option files."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

FLOAT_BITS = 32
QUANT_BITS = range(2, 9)


def check_bits(value: object, argument: str, allow_float: bool = True) -> int:
    """Return ``value`` if it is a valid bit width: an int in 2..8, or 32 (float) if allowed.

    Raises:
        ValueError: naming ``argument`` and the allowed values.
    """
    allowed = "2..8 (or 32 to keep that side in float)" if allow_float else "2..8"
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(
            f"{argument} must be an int in {allowed}, got {value!r} of type {type(value).__name__}"
        )
    if value not in QUANT_BITS and not (allow_float and value == FLOAT_BITS):
        raise ValueError(f"{argument} must be in {allowed}, got {value}")
    return value


def closest(name: object, choices: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The choice nearest to ``name`` (difflib's ratio of at least ``cutoff``), or None.

    Example:
        >>> closest("bitz", ["bits", "method"])
        'bits'
    """
    matches = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=cutoff)
    return matches[0] if matches else None


def did_you_mean(name: object, choices: Iterable[str], prefix: str = "") -> str:
    """``" (did you mean <prefix><nearest>?)"`` for an unknown ``name``; ``""`` if none is near."""
    match = closest(name, choices)
    return f" (did you mean {prefix}{match}?)" if match else ""


def check_keys(given: Iterable[object], valid: Sequence[str], where: str = "") -> None:
    """Refuse keys that are not in ``valid``, suggesting the nearest valid key for each.

    Args:
        given: the keys to check.
        valid: the accepted keys, in the order the message lists them.
        where: prefix of the keys in the message (e.g. ``"quantsr."`` for a YAML section).

    Raises:
        ValueError: ``unknown key(s) quantsr.bitz (did you mean quantsr.bits?); valid keys:
            bits, ...``.
    """
    unknown = sorted(str(k) for k in set(given) - set(valid))
    if unknown:
        named = ", ".join(f"{where}{k}{did_you_mean(k, valid, where)}" for k in unknown)
        raise ValueError(f"unknown key(s) {named}; valid keys: {', '.join(valid)}")
