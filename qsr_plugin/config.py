"""Settings as frozen dataclasses, validated on construction, mapping one to one onto dicts/YAML."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from ._validation import FLOAT_BITS, check_bits, check_keys
from .quantizers.cadyq import check_candidate_bits, check_cost_weight
from .quantizers.learned_step import check_phi_k
from .quantizers.registry import get_method, list_methods
from .rewrite.depth import POLICIES

ConfigT = TypeVar("ConfigT", bound="DictConfig")


class DictConfig:
    """Mixin for frozen dataclasses that convert to and from plain dicts."""

    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain dict (JSON/YAML friendly)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[ConfigT], values: dict[str, Any], where: str = "") -> ConfigT:
        """Build from a dict; unknown keys are refused with the nearest and the valid ones.

        Args:
            values: the settings.
            where: prefix for error messages (e.g. ``"quantsr."`` for a YAML section).
        """
        if not isinstance(values, dict):
            raise TypeError(f"{where or cls.__name__} must be a mapping, got {type(values)}")
        check_keys(values, [f.name for f in dataclasses.fields(cls)], where)
        return cls(**values)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


@dataclasses.dataclass(frozen=True)
class QuantSpec(DictConfig):
    """How to quantize one Conv2d or Linear layer.

    Attributes:
        method: a registered method name (``quantsr``, ``lsq``, ``dorefa``, ``pams``,
            ``cadyq``).
        weight_bits: weight bit width, 2..8, or 32 to keep weights in float.
        act_bits: input-activation bit width, 2..8, or 32 to keep activations in float
            (``cadyq``: the lowest default candidate).
        per_channel: one weight step per output channel instead of per tensor.
        phi_k: sharpness k of QuantSR's redistribution function (``quantsr`` only;
            default 1.0; 0 gives straight-through rounding).
        shift: learn QuantSR's activation shift tau (``quantsr`` only; default True).
        candidate_bits: the activation bit widths CADyQ's selector chooses from, each in
            2..8 (``cadyq`` only; default ``act_bits``, ``+2``, ``+4`` capped at 8).
        cost_weight: weight of CADyQ's bit cost term in the training loss, >= 0
            (``cadyq`` only; default 0.05).

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
    candidate_bits: tuple[int, ...] | None = None
    cost_weight: float | None = None

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
        if self.candidate_bits is not None:
            object.__setattr__(self, "candidate_bits", check_candidate_bits(self.candidate_bits))
        if self.cost_weight is not None:
            check_cost_weight(self.cost_weight)
        if self.method == "cadyq" and self.act_bits == FLOAT_BITS:
            raise ValueError(
                "act_bits=32 keeps activations in float, but method='cadyq' quantizes them at "
                "the bits its selector picks; give act_bits in 2..8 or another method"
            )
        for option, value in self.options().items():
            if option not in method.options and value not in (None, False):
                raise ValueError(
                    f"{option}={value!r} is not available with method={self.method!r}; "
                    f"it applies to methods that list it: "
                    f"{', '.join(m for m in _methods_with(option))}"
                )

    def options(self) -> dict[str, Any]:
        """The optional settings that were given (not None)."""
        given = {
            "phi_k": self.phi_k,
            "shift": self.shift,
            "per_channel": self.per_channel,
            "candidate_bits": self.candidate_bits,
            "cost_weight": self.cost_weight,
        }
        return {k: v for k, v in given.items() if v is not None}


def _methods_with(option: str) -> list[str]:
    return [name for name in list_methods() if option in get_method(name).options]


SCOPES = ("body", "all")


def _int_tuple(value: Any, argument: str) -> tuple[int, ...]:
    if isinstance(value, int | str) or not hasattr(value, "__iter__"):
        raise ValueError(f"{argument} must be a list of ints, got {value!r}")
    items = tuple(value)
    if any(isinstance(v, bool) or not isinstance(v, int) for v in items):
        raise ValueError(f"{argument} must be a list of ints, got {list(items)!r}")
    return items


def _pattern_tuple(value: Any, argument: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    items = tuple(value)
    if not all(isinstance(v, str) and v for v in items):
        raise ValueError(f"{argument} must be a list of non-empty strings, got {list(items)!r}")
    return items


@dataclasses.dataclass(frozen=True)
class QuantizeConfig(DictConfig):
    """Everything :func:`qsr_plugin.quantize` does to a model; maps onto a YAML section.

    Attributes:
        bits: weight and activation bits (2..8, or 32 for float), unless set separately.
        weight_bits: weight bits; None means ``bits``.
        act_bits: activation bits; None means ``bits``.
        method: quantization method (``quantsr``, ``lsq``, ``dorefa``, ``pams``, ``cadyq``).
        per_channel: one weight step per output channel.
        phi_k: sharpness of QuantSR's redistribution function (``quantsr`` only).
        shift: learn QuantSR's activation shift tau (``quantsr`` only).
        candidate_bits: CADyQ's candidate activation bit widths (``cadyq`` only).
        cost_weight: weight of CADyQ's bit cost term (``cadyq`` only).
        depth_variants: depths of the body that share one set of weights, e.g. [4, 2, 1];
            None for no depth switching. A depth above the body's grows the body.
        depth_policy: which blocks a variant runs: ``"spread"``, ``"prefix"`` or
            ``"importance"`` (ranked from data during training; see
            :mod:`qsr_plugin.rewrite.depth` and :mod:`qsr_plugin.rewrite.importance`).
        depth_members: explicit block indices per depth, overriding the policy.
        scope: ``"body"`` (Conv2d/Linear inside the body) or ``"all"`` (every Conv2d/Linear
            except the model's first and last).
        include: glob patterns of qualified module names to quantize as well.
        exclude: glob patterns of qualified module names to keep in float.
        body: qualified name of the body container; None to detect it.

    Example:
        >>> QuantizeConfig(bits=2, depth_variants=[4, 2, 1]).layer_spec().weight_bits
        2
    """

    bits: int = 4
    weight_bits: int | None = None
    act_bits: int | None = None
    method: str = "quantsr"
    per_channel: bool = False
    phi_k: float | None = None
    shift: bool | None = None
    candidate_bits: tuple[int, ...] | None = None
    cost_weight: float | None = None
    depth_variants: tuple[int, ...] | None = None
    depth_policy: str = "spread"
    depth_members: dict[int, tuple[int, ...]] | None = None
    scope: str = "body"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    body: str | None = None

    def __post_init__(self) -> None:
        check_bits(self.bits, "bits")
        spec = self.layer_spec()  # validates method, bits and method options
        object.__setattr__(self, "candidate_bits", spec.candidate_bits)
        if self.depth_variants is not None:
            depths = _int_tuple(self.depth_variants, "depth_variants")
            if not depths:
                raise ValueError("depth_variants is empty; give one or more depths or None")
            if any(d < 1 for d in depths):
                raise ValueError(f"depth_variants must be positive, got {list(depths)}")
            if len(set(depths)) != len(depths):
                raise ValueError(f"depth_variants has duplicates: {list(depths)}")
            object.__setattr__(self, "depth_variants", tuple(sorted(depths, reverse=True)))
        if self.depth_policy not in POLICIES:
            raise ValueError(
                f"depth_policy must be one of {', '.join(POLICIES)}, got {self.depth_policy!r}"
            )
        if self.depth_members is not None:
            if self.depth_variants is None:
                raise ValueError("depth_members needs depth_variants")
            members = {
                int(d): _int_tuple(m, f"depth_members[{d}]") for d, m in self.depth_members.items()
            }
            object.__setattr__(self, "depth_members", members)
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {self.scope!r}")
        object.__setattr__(self, "include", _pattern_tuple(self.include, "include"))
        object.__setattr__(self, "exclude", _pattern_tuple(self.exclude, "exclude"))
        if self.body is not None and not isinstance(self.body, str):
            raise ValueError(f"body must be a module path string, got {self.body!r}")

    def layer_spec(self) -> QuantSpec:
        """The per-layer quantization settings."""
        return QuantSpec(
            method=self.method,
            weight_bits=self.bits if self.weight_bits is None else self.weight_bits,
            act_bits=self.bits if self.act_bits is None else self.act_bits,
            per_channel=self.per_channel,
            phi_k=self.phi_k,
            shift=self.shift,
            candidate_bits=self.candidate_bits,
            cost_weight=self.cost_weight,
        )
