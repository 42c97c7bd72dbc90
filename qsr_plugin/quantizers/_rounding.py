"""Learned-step fake quantization with QuantSR's redistributed rounding gradient.

Two autograd functions compute the whole quantizer of LSQ and QuantSR's RLQ,

    x' = x + tau                    (tau optional, broadcast over x)
    v  = x' / s
    y  = round(clip(v, Qn, Qp)) * s

and, in their backward passes, the closed-form gradients

    dy/dx'  = phi'(v - floor(v))          if Qn <= v <= Qp, else 0
    dy/dtau = dy/dx'  (summed over the broadcast dimensions)
    dy/ds   = g * (round(clip(v)) - v * dy/dx')   (g: the LSQ gradient scale)

where phi is the redistribution function of QuantSR,

    phi(r)  = tanh(k (r - 1/2)) / (2 tanh(k/2)) + 1/2,         r in [0, 1)
    phi'(r) = k sech^2(k (r - 1/2)) / (2 tanh(k/2)).

k = 0 is the limit k -> 0, phi(r) = r: the straight-through estimator of LSQ.
One saved tensor (v) serves the whole backward pass. For activations (large tensors, one
step per tensor) the element-wise arithmetic runs on flattened tensors through
``torch.compile`` when enabled (see ``_kernels``); weights (small, maybe one step per
channel) use the eager broadcast version.
"""

from __future__ import annotations

import math

import torch

from ._kernels import Kernels


def phi(r: torch.Tensor, k: float) -> torch.Tensor:
    """QuantSR's redistribution function on the fractional part ``r`` in [0, 1)."""
    if k == 0:
        return r
    return torch.tanh(k * (r - 0.5)) / (2 * math.tanh(k / 2)) + 0.5


def phi_derivative(r: torch.Tensor, k: float) -> torch.Tensor:
    """Derivative of :func:`phi`: ``k * sech^2(k (r - 1/2)) / (2 tanh(k/2))``; 1 when k is 0."""
    if k == 0:
        return torch.ones_like(r)
    t = torch.tanh(k * (r - 0.5))
    return (1 - t * t) * (k / (2 * math.tanh(k / 2)))


def _forward_math(shifted, step, q_min, q_max):
    v = shifted / step
    return v.clamp(q_min, q_max).round() * step, v


def _backward_math(grad_out, v, q_min, q_max, phi_k: float):
    """Gradient w.r.t. the shifted input, and the per-element terms of the step gradient."""
    clipped = v.clamp(q_min, q_max)
    inside = clipped == v
    slope = inside.to(v.dtype) if phi_k == 0 else phi_derivative(v - v.floor(), phi_k) * inside
    return grad_out * slope, grad_out * (clipped.round() - v * slope)


def _flat_backward_math(grad_out, v, q_min, q_max, phi_k: float):
    grad_shifted, step_terms = _backward_math(grad_out, v, q_min, q_max, phi_k)
    return grad_shifted, step_terms.sum()


def _flat(x: torch.Tensor) -> torch.Tensor:
    """``x`` as a 1-D tensor that is not a view, so compiled graphs guard on one size only."""
    return x.reshape(-1).detach()


ACTIVATION_KERNELS = Kernels(_forward_math, _flat_backward_math, compilable=True)


class _ActivationFakeQuantize(torch.autograd.Function):
    """Per-tensor step, optional per-channel shift; kernels on flattened tensors."""

    @staticmethod
    def forward(ctx, x, shift, step, q_min, q_max, grad_scale, phi_k):
        shifted = x if shift is None else x + shift
        out, v = ACTIVATION_KERNELS.forward(_flat(shifted), step.detach(), q_min, q_max)
        ctx.save_for_backward(v, shift, q_min, q_max)
        ctx.shape, ctx.grad_scale, ctx.phi_k = x.shape, grad_scale, phi_k
        return out.view(x.shape)

    @staticmethod
    def backward(ctx, grad_out):
        v, shift, q_min, q_max = ctx.saved_tensors
        grad_shifted, grad_step = ACTIVATION_KERNELS.backward(
            _flat(grad_out), v, q_min, q_max, ctx.phi_k
        )
        grad_shifted = grad_shifted.view(ctx.shape)
        grad_shift = None if shift is None else grad_shifted.sum_to_size(shift.shape)
        return grad_shifted, grad_shift, grad_step * ctx.grad_scale, None, None, None, None


class _BroadcastFakeQuantize(torch.autograd.Function):
    """Step (and shift) of any broadcastable shape, e.g. one step per output channel."""

    @staticmethod
    def forward(ctx, x, shift, step, q_min, q_max, grad_scale, phi_k):
        out, v = _forward_math(x if shift is None else x + shift, step, q_min, q_max)
        ctx.save_for_backward(v, shift, step, q_min, q_max)
        ctx.grad_scale, ctx.phi_k = grad_scale, phi_k
        return out

    @staticmethod
    def backward(ctx, grad_out):
        v, shift, step, q_min, q_max = ctx.saved_tensors
        grad_shifted, step_terms = _backward_math(grad_out, v, q_min, q_max, ctx.phi_k)
        grad_step = step_terms.sum_to_size(step.shape) * ctx.grad_scale
        grad_shift = None if shift is None else grad_shifted.sum_to_size(shift.shape)
        return grad_shifted, grad_shift, grad_step, None, None, None, None


def learned_step_fake_quantize(
    x: torch.Tensor,
    step: torch.Tensor,
    q_min: torch.Tensor,
    q_max: torch.Tensor,
    grad_scale: float,
    phi_k: float,
    shift: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fake-quantize ``x`` with a learned step (and optional learned shift).

    Args:
        x: the tensor to quantize.
        step: the quantization step ``s``, broadcastable to ``x`` (a scalar or per channel).
        q_min: lowest integer code ``Qn`` (0-dim tensor).
        q_max: highest integer code ``Qp`` (0-dim tensor).
        grad_scale: factor ``g`` applied to the gradient of ``step``.
        phi_k: sharpness ``k`` of the redistribution function; 0 gives straight-through.
        shift: the redistribution shift ``tau``, broadcastable to ``x``, or None.

    Returns:
        ``round(clip((x + shift) / step, q_min, q_max)) * step``.

    Example:
        >>> x = torch.tensor([0.26, -0.9, 3.0])
        >>> learned_step_fake_quantize(x, torch.tensor(0.5), torch.tensor(-2.0),
        ...                            torch.tensor(1.0), 1.0, 1.0)
        tensor([ 0.5000, -1.0000,  0.5000])
    """
    function = _ActivationFakeQuantize if step.dim() == 0 else _BroadcastFakeQuantize
    return function.apply(x, shift, step, q_min, q_max, grad_scale, phi_k)


def round_straight_through(x: torch.Tensor) -> torch.Tensor:
    """``round(x)`` in the forward pass, identity gradient in the backward pass."""
    return x + (x.round() - x).detach()
