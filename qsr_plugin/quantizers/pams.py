"""PAMS quantizers (Li et al., ECCV 2020), the learnable-clipping baseline.

Activations use a learnable bound alpha (PACT-like) and a symmetric signed grid with
``n = 2^(b-1) - 1`` positive levels, straight-through rounding:

    y = round(clip(x, -alpha, alpha) * n / alpha) * alpha / n

so dy/dx = 1 inside [-alpha, alpha] and 0 outside, dy/dalpha = sign(x) outside and 0
inside. alpha starts at the largest |x| seen during initialisation (PAMS tracks the
running maximum during its first epoch). Weights use the same symmetric grid with a
fixed bound ``max|w|`` (per tensor, or per output channel), recomputed at every step.
PAMS' structured knowledge transfer loss is a training recipe, not part of the quantizer.
Half-precision inputs are quantized in fp32 and returned in their own dtype.
"""

from __future__ import annotations

import torch
from torch import nn

from ._rounding import round_straight_through, widened
from .base import Quantizer

MIN_BOUND = 1e-8


def _symmetric_levels(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def pams_activation_quantize(x: torch.Tensor, alpha: torch.Tensor, bits: int) -> torch.Tensor:
    """PAMS' activation fake quantization of ``x`` with clipping bound ``alpha`` (see above).

    ``alpha`` is a 0-dim tensor or broadcasts over ``x`` (one bound per sample).
    """
    scale = alpha.detach() / _symmetric_levels(bits)
    clipped = torch.minimum(torch.maximum(widened(x), -alpha), alpha)
    # The whole rounding step is straight-through, so alpha only gets the clip gradient.
    return (clipped + ((clipped / scale).round() * scale - clipped).detach()).to(x.dtype)


class PAMSActivationQuantizer(Quantizer):
    """PAMS activation quantizer with a learnable clipping bound ``alpha``."""

    def __init__(self, bits: int) -> None:
        super().__init__(bits, "activation")
        self.alpha = nn.Parameter(torch.ones(()))

    def statistics(self, x):
        return {"max_abs": ("max", x.abs().max())}

    def initialize_from(self, statistics):
        self.alpha.copy_(self._floor_step(statistics["max_abs"], MIN_BOUND))

    def quantize(self, x):
        return pams_activation_quantize(x, self.alpha, self.bits)


class PAMSWeightQuantizer(Quantizer):
    """PAMS weight quantizer: symmetric, bound ``max|w|`` per tensor or per output channel."""

    needs_data = False

    def __init__(self, bits: int, per_channel: bool = False) -> None:
        super().__init__(bits, "weight")
        self.per_channel = per_channel

    def quantize(self, w):
        levels, dtype, w = _symmetric_levels(self.bits), w.dtype, widened(w)
        if self.per_channel:
            bound = w.detach().abs().flatten(1).amax(dim=1).view(-1, *[1] * (w.dim() - 1))
        else:
            bound = w.detach().abs().max()
        scale = bound.clamp(min=MIN_BOUND) / levels
        return (round_straight_through(w / scale) * scale).to(dtype)
