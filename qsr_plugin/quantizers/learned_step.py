"""Learned-step quantizers: QuantSR's RLQ and, as its special case, LSQ.

RLQ (QuantSR, Qin et al., NeurIPS 2023), activation path, for an input x with C channels:

    x' = x + tau                          tau: learnable, per channel, initialised to 0
    q  = R(clip(x' / s, Qn, Qp)),  y = q * s
    s  initialised to 2 * mean(|x'|) / sqrt(Qp); its gradient scaled by 1 / sqrt(numel(x') * Qp)
    [Qn, Qp] = [-2^(b-1), 2^(b-1) - 1] if the initialisation data has min(x') < -1e-5,
               else [0, 2^b - 1]

R rounds in the forward pass; its backward pass uses the derivative of the redistribution
function phi with sharpness k (see ``_rounding``). The weight path is the same without tau,
always signed, with a step per tensor or per output channel (then the mean and the gradient
scale are taken per channel).

LSQ (Esser et al., ICLR 2020) is the same quantizer with no shift (tau = 0, frozen) and
straight-through rounding (k = 0).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ._rounding import learned_step_fake_quantize
from .base import Quantizer

SIGNED_THRESHOLD = -1e-5
MIN_STEP = 1e-8


def code_range(bits: int, signed: bool) -> tuple[int, int]:
    """Integer codes ``(Qn, Qp)`` of a ``bits``-bit signed or unsigned quantizer."""
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def check_phi_k(phi_k: object) -> float:
    """Validate the redistribution sharpness ``k`` (a float >= 0; 0 means straight-through)."""
    if isinstance(phi_k, bool) or not isinstance(phi_k, int | float) or not phi_k >= 0:
        raise ValueError(f"phi_k must be a number >= 0 (0 = straight-through), got {phi_k!r}")
    return float(phi_k)


class _LearnedStepQuantizer(Quantizer):
    """Shared machinery: a learnable step, a code range, the fused fake-quantize call."""

    def __init__(self, bits: int, role: str, phi_k: float, step_shape: tuple[int, ...]) -> None:
        super().__init__(bits, role)
        self.phi_k = check_phi_k(phi_k)
        self.step = nn.Parameter(torch.ones(step_shape))
        self._codes: dict[torch.device, tuple[torch.Tensor, torch.Tensor, int]] = {}
        self._range: tuple[int, int] | None = None

    def is_signed(self) -> bool:
        raise NotImplementedError

    def state_changed(self) -> None:
        super().state_changed()
        self._codes, self._range = {}, None

    def codes(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``(Qn, Qp)`` as fp32 0-dim tensors on ``like``'s device, and Qp as an int.

        Cached per device in one dict that ``DataParallel`` replicas share (they copy the
        module's attributes shallowly), so each replica's device builds them once.
        """
        cached = self._codes.get(like.device)
        if cached is None:
            q_min, q_max = self._code_range()
            cached = (
                torch.tensor(float(q_min), device=like.device),
                torch.tensor(float(q_max), device=like.device),
                q_max,
            )
            self._codes[like.device] = cached
        return cached

    def _code_range(self) -> tuple[int, int]:
        """The integer code range, read from the buffers once per state change."""
        if self._range is None:
            self._range = code_range(self.bits, self.is_signed())
        return self._range

    def _initial_step(self, mean_abs: torch.Tensor) -> torch.Tensor:
        _, q_max = code_range(self.bits, self.is_signed())
        step = 2 * mean_abs / math.sqrt(q_max)
        return self._floor_step(step, MIN_STEP).to(self.step.dtype).reshape(self.step.shape)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, phi_k={self.phi_k:g}"


class LearnedStepActivationQuantizer(_LearnedStepQuantizer):
    """RLQ / LSQ activation quantizer (see the module docstring).

    Args:
        bits: bit width, 2..8.
        num_channels: channels of the input (the size of tau).
        channel_dim: the input's channel dimension, counted from the end
            (-3 for (N, C, H, W) images, -1 for (..., C) tokens).
        shift: learn the redistribution shift tau (QuantSR) or not (LSQ).
        phi_k: sharpness of the redistribution function; 0 = straight-through (LSQ).

    Example:
        >>> q = LearnedStepActivationQuantizer(4, num_channels=8, channel_dim=-3)
        >>> y = q.train()(torch.randn(2, 8, 5, 5))  # first training batch initialises
        >>> bool(q.signed), y.unique().numel() <= 16
        (True, True)
    """

    def __init__(
        self, bits: int, num_channels: int, channel_dim: int, shift: bool = True, phi_k=1.0
    ) -> None:
        super().__init__(bits, "activation", phi_k, step_shape=())
        if channel_dim >= 0:
            raise ValueError(f"channel_dim must count from the end (< 0), got {channel_dim}")
        self.channel_dim = channel_dim
        shift_shape = (num_channels,) + (1,) * (-channel_dim - 1)
        self.shift = nn.Parameter(torch.zeros(shift_shape)) if shift else None
        self.register_buffer("signed", torch.tensor(False))

    def is_signed(self) -> bool:
        return bool(self.signed)

    def _shifted(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.shift is None else x + self.shift

    def statistics(self, x):
        shifted = self._shifted(x)
        return {"mean_abs": ("mean", shifted.abs().mean()), "min": ("min", shifted.min())}

    def initialize_from(self, statistics):
        self.signed.fill_(bool(statistics["min"] < SIGNED_THRESHOLD))
        self._codes, self._range = {}, None
        self.step.copy_(self._initial_step(statistics["mean_abs"]))

    def quantize(self, x):
        q_min, q_max, q_max_int = self.codes(x)
        grad_scale = 1.0 / math.sqrt(x.numel() * q_max_int)
        return learned_step_fake_quantize(
            x, self.step, q_min, q_max, grad_scale, self.phi_k, shift=self.shift
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, shift={self.shift is not None}"


class LearnedStepWeightQuantizer(_LearnedStepQuantizer):
    """RLQ / LSQ weight quantizer: signed, step per tensor or per output channel.

    Args:
        bits: bit width, 2..8.
        num_channels: output channels of the weight (dimension 0); needed for per-channel.
        per_channel: one step per output channel instead of one per tensor.
        phi_k: sharpness of the redistribution function; 0 = straight-through (LSQ).
        weight_dim: number of dimensions of the weight (4 for Conv2d, 2 for Linear).
    """

    def __init__(
        self,
        bits: int,
        num_channels: int | None,
        per_channel: bool = False,
        phi_k=1.0,
        weight_dim: int = 4,
    ) -> None:
        if per_channel and not num_channels:
            raise ValueError(
                "per_channel=True needs a layer with output channels (num_channels), "
                f"got num_channels={num_channels!r}; use per_channel=False"
            )
        step_shape = (num_channels,) + (1,) * (weight_dim - 1) if per_channel else ()
        super().__init__(bits, "weight", phi_k, step_shape=step_shape)
        self.per_channel = per_channel

    def is_signed(self) -> bool:
        return True

    def _channel_mean_abs(self, w: torch.Tensor) -> torch.Tensor:
        if self.per_channel:
            return w.abs().flatten(1).mean(dim=1)
        return w.abs().mean()

    def statistics(self, x):
        return {"mean_abs": ("mean", self._channel_mean_abs(x))}

    def initialize_from(self, statistics):
        self.step.copy_(self._initial_step(statistics["mean_abs"]))

    def quantize(self, x):
        q_min, q_max, q_max_int = self.codes(x)
        per_step = x.numel() // self.step.numel()
        grad_scale = 1.0 / math.sqrt(per_step * q_max_int)
        return learned_step_fake_quantize(x, self.step, q_min, q_max, grad_scale, self.phi_k)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, per_channel={self.per_channel}"
