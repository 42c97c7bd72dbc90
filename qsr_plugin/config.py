"""Settings as frozen dataclasses, validated on construction, mapping one to one onto dicts/YAML."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from ._validation import check_bits
from .quantizers.learned_step import check_phi_k
from .quantizers.registry import get_method, list_methods

ConfigT = TypeVar("ConfigT", bound="DictConfig")


class DictConfig:
    """Mixin for frozen dataclasses that convert to and from plain dicts."""

    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain dict (JSON/YAML friendly)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[ConfigT], values: dict[str, Any], where: str = "") -> ConfigT:
        """Build from a dict; unknown keys are refused with the list of valid ones.

        Args:
            values: the settings.
            where: prefix for error messages (e.g. ``"quantsr."`` for a YAML section).
        """
        if not isinstance(values, dict):
            raise TypeError(f"{where or cls.__name__} must be a mapping, got {type(values)}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(
                f"unknown key(s) {', '.join(where + k for k in unknown)}; "
                f"valid keys: {', '.join(names)}"
            )
        return cls(**values)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


@dataclasses.dataclass(frozen=True)
class QuantSpec(DictConfig):
    """How to quantize one Conv2d or Linear layer.

    Attributes:
        method: a registered method name (``quantsr``, ``lsq``, ``dorefa``, ``pams``).
        weight_bits: weight bit width, 2..8, or 32 to keep weights in float.
        act_bits: input-activation bit width, 2..8, or 32 to keep activations in float.
        per_channel: one weight step per output channel instead of per tensor.
        phi_k: sharpness k of QuantSR's redistribution function (``quantsr`` only;
            default 1.0; 0 gives straight-through rounding).
        shift: learn QuantSR's activation shift tau (``quantsr`` only; default True).

    Example:
        >>> QuantSpec(weight_bits=2, act_bits=4).method
        'quantsr'
    """

    method: str = "quantsr"
    weight_bits: int = 4
    act_bits: int = 4
    per_channel: bool = False
    phi_k: float | None = None
    shift: bool | None = None

    def __post_init__(self) -> None:
        method = get_method(self.method)
        check_bits(self.weight_bits, "weight_bits")
        check_bits(self.act_bits, "act_bits")
        if not isinstance(self.per_channel, bool):
            raise ValueError(f"per_channel must be True or False, got {self.per_channel!r}")
        if self.phi_k is not None:
            check_phi_k(self.phi_k)
        if self.shift is not None and not isinstance(self.shift, bool):
            raise ValueError(f"shift must be True, False or None, got {self.shift!r}")
        for option, value in self.options().items():
            if option not in method.options and value not in (None, False):
                raise ValueError(
                    f"{option}={value!r} is not available with method={self.method!r}; "
                    f"it applies to methods that list it: "
                    f"{', '.join(m for m in _methods_with(option))}"
                )

    def options(self) -> dict[str, Any]:
        """The optional settings that were given (not None)."""
        given = {"phi_k": self.phi_k, "shift": self.shift, "per_channel": self.per_channel}
        return {k: v for k, v in given.items() if v is not None}


def _methods_with(option: str) -> list[str]:
    return [name for name in list_methods() if option in get_method(name).options]
