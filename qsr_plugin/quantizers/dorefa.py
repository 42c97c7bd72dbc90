"""DoReFa-Net quantizers (Zhou et al., 2016), the fixed-range baseline.

With ``quantize_b(r) = round((2^b - 1) r) / (2^b - 1)`` for r in [0, 1] and
straight-through rounding:

- activations: ``y = quantize_b(clip(x, 0, 1))`` (zero gradient outside [0, 1]);
- weights: ``w' = tanh(w) / (2 max|tanh(w)|) + 1/2``, ``y = 2 quantize_b(w') - 1``,
  so quantized weights lie in [-1, 1] whatever the float weights' scale.

Nothing is learned and nothing depends on data, so these quantizers need no calibration.
Half-precision inputs are quantized in fp32 and returned in their own dtype.
"""

from __future__ import annotations

import torch

from ._rounding import round_straight_through, widened
from .base import Quantizer


def _quantize_unit(r: torch.Tensor, bits: int) -> torch.Tensor:
    levels = 2**bits - 1
    return round_straight_through(r * levels) / levels


class DoReFaActivationQuantizer(Quantizer):
    """DoReFa activation quantizer: clip to [0, 1], ``2^b`` uniform levels.

    Example:
        >>> DoReFaActivationQuantizer(2)(torch.tensor([-0.5, 0.2, 0.5, 2.0]))
        tensor([0.0000, 0.3333, 0.6667, 1.0000])
    """

    needs_data = False

    def __init__(self, bits: int) -> None:
        super().__init__(bits, "activation")

    def quantize(self, x):
        return _quantize_unit(widened(x).clamp(0, 1), self.bits).to(x.dtype)


class DoReFaWeightQuantizer(Quantizer):
    """DoReFa weight quantizer: tanh-normalised to [-1, 1], ``2^b`` uniform levels."""

    needs_data = False

    def __init__(self, bits: int) -> None:
        super().__init__(bits, "weight")

    def quantize(self, w):
        t = torch.tanh(widened(w))
        unit = t / (2 * t.abs().max()) + 0.5
        return (2 * _quantize_unit(unit, self.bits) - 1).to(w.dtype)
