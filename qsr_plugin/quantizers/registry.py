"""String registry of quantization methods: a name maps to an activation and a weight quantizer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .base import Quantizer
from .cadyq import DEFAULT_COST_WEIGHT, CADyQActivationQuantizer, default_candidate_bits
from .dorefa import DoReFaActivationQuantizer, DoReFaWeightQuantizer
from .learned_step import LearnedStepActivationQuantizer, LearnedStepWeightQuantizer
from .pams import PAMSActivationQuantizer, PAMSWeightQuantizer

# (bits, num_channels, channel_dim, options) -> activation quantizer
ActivationFactory = Callable[[int, int, int, dict], Quantizer]
# (bits, out_channels, weight_dim, options) -> weight quantizer
WeightFactory = Callable[[int, int, int, dict], Quantizer]


@dataclass(frozen=True)
class QuantMethod:
    """A quantization method: how to build its activation and weight quantizers.

    Attributes:
        name: registry key, e.g. ``"quantsr"``.
        summary: one line for listings.
        make_activation: factory for the input-activation quantizer of a layer.
        make_weight: factory for the weight quantizer of a layer.
        options: names of the optional settings (``phi_k``, ``shift``, ``per_channel``,
            ``candidate_bits``, ``cost_weight``) the method honours; others are refused.
    """

    name: str
    summary: str
    make_activation: ActivationFactory
    make_weight: WeightFactory
    options: frozenset[str]


_METHODS: dict[str, QuantMethod] = {}


def register_method(method: QuantMethod) -> QuantMethod:
    """Add ``method`` to the registry (its name must be new)."""
    if method.name in _METHODS:
        raise ValueError(f"quantization method {method.name!r} is already registered")
    _METHODS[method.name] = method
    return method


def list_methods() -> list[str]:
    """Names of the registered quantization methods."""
    return sorted(_METHODS)


def get_method(name: str) -> QuantMethod:
    """The method registered as ``name``.

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    try:
        return _METHODS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"method must be one of {', '.join(map(repr, list_methods()))}; got {name!r}"
        ) from None


register_method(
    QuantMethod(
        name="quantsr",
        summary="QuantSR RLQ: learned step, learned shift tau, redistributed rounding gradient",
        make_activation=lambda bits, channels, dim, o: LearnedStepActivationQuantizer(
            bits, channels, dim, shift=o.get("shift", True), phi_k=o.get("phi_k", 1.0)
        ),
        make_weight=lambda bits, channels, wdim, o: LearnedStepWeightQuantizer(
            bits, channels, o.get("per_channel", False), o.get("phi_k", 1.0), wdim
        ),
        options=frozenset({"phi_k", "shift", "per_channel"}),
    )
)
register_method(
    QuantMethod(
        name="lsq",
        summary="LSQ: learned step, straight-through rounding, no shift",
        make_activation=lambda bits, channels, dim, o: LearnedStepActivationQuantizer(
            bits, channels, dim, shift=False, phi_k=0.0
        ),
        make_weight=lambda bits, channels, wdim, o: LearnedStepWeightQuantizer(
            bits, channels, o.get("per_channel", False), 0.0, wdim
        ),
        options=frozenset({"per_channel"}),
    )
)
register_method(
    QuantMethod(
        name="dorefa",
        summary="DoReFa: activations clipped to [0, 1], tanh-normalised weights",
        make_activation=lambda bits, channels, dim, o: DoReFaActivationQuantizer(bits),
        make_weight=lambda bits, channels, wdim, o: DoReFaWeightQuantizer(bits),
        options=frozenset(),
    )
)
register_method(
    QuantMethod(
        name="pams",
        summary="PAMS: learnable activation clipping bound, max-abs weight scale",
        make_activation=lambda bits, channels, dim, o: PAMSActivationQuantizer(bits),
        make_weight=lambda bits, channels, wdim, o: PAMSWeightQuantizer(
            bits, o.get("per_channel", False)
        ),
        options=frozenset({"per_channel"}),
    )
)
register_method(
    QuantMethod(
        name="cadyq",
        summary="CADyQ: per-image activation bits chosen by a trained selector, PAMS grids",
        make_activation=lambda bits, channels, dim, o: CADyQActivationQuantizer(
            o.get("candidate_bits") or default_candidate_bits(bits),
            channels,
            dim,
            o.get("cost_weight", DEFAULT_COST_WEIGHT),
        ),
        make_weight=lambda bits, channels, wdim, o: PAMSWeightQuantizer(
            bits, o.get("per_channel", False)
        ),
        options=frozenset({"candidate_bits", "cost_weight", "per_channel"}),
    )
)
