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
Both passes read the input x: the backward pass recomputes v from x (a layer keeps its
input for its own backward pass anyway), so no extra tensor is stored. With one step for
the whole tensor (activations, per-tensor weights), each pass, shift and reductions
included, is one call of a ``torch.compile``-d kernel when enabled (see ``_kernels``);
a step per channel uses the eager broadcast version.

The arithmetic always runs in fp32 (fp64 inputs stay fp64): half-precision inputs, e.g.
under ``torch.autocast``, are widened inside the kernels and the output is returned in the
input's dtype, so the codes are those of an fp32 model, and the step and shift gradients
are summed in fp32, where fp16 with a GradScaler's loss scale would overflow.
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


def widened(t: torch.Tensor) -> torch.Tensor:
    """``t`` in fp32 if it is a half-precision (fp16, bf16) tensor, else unchanged."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _divided(x, shift, step):
    x = widened(x)
    return (x if shift is None else x + widened(shift)) / widened(step)


def _forward_math(x, shift, step, q_min, q_max):
    codes = _divided(x, shift, step).clamp(q_min, q_max).round()
    return (codes * widened(step)).to(x.dtype)


def _backward_math(grad_out, x, shift, step, q_min, q_max, phi_k: float):
    """Gradient w.r.t. the shifted input, and the per-element terms of the step gradient,
    both in the compute dtype (fp32 for half-precision inputs)."""
    grad_out = widened(grad_out)
    v = _divided(x, shift, step)
    clipped = v.clamp(q_min, q_max)
    inside = clipped == v
    slope = inside.to(v.dtype) if phi_k == 0 else phi_derivative(v - v.floor(), phi_k) * inside
    return grad_out * slope, grad_out * (clipped.round() - v * slope)


def _plain_forward(x, step, q_min, q_max):
    return _forward_math(x, None, step, q_min, q_max)


def _plain_backward(grad_out, x, step, q_min, q_max, phi_k: float):
    """On flat tensors: the gradient of x and the step gradient."""
    grad_x, step_terms = _backward_math(grad_out, x, None, step, q_min, q_max, phi_k)
    return grad_x.to(x.dtype), step_terms.sum()


def _channel_forward(x, shift, step, q_min, q_max):
    return _forward_math(x, shift, step, q_min, q_max)


def _channel_backward(grad_out, x, shift, step, q_min, q_max, phi_k: float):
    """On (outer, C, inner) tensors with a (C, 1) shift: the gradient of x, and (outer, C)
    partial sums of the shift and step gradients.

    Reducing only the contiguous last dimension lets the reductions share the element-wise
    loop; a reduction over (outer, inner) at once compiles to separate, slower passes.
    """
    grad_x, step_terms = _backward_math(grad_out, x, shift, step, q_min, q_max, phi_k)
    return grad_x.to(x.dtype), grad_x.sum(dim=2), step_terms.sum(dim=2)


def _token_forward(x, shift, step, q_min, q_max):
    return _forward_math(x, shift, step, q_min, q_max)


def _token_backward(grad_out, x, shift, step, q_min, q_max, phi_k: float):
    """On (tokens, C) tensors with a (C,) shift: the gradients of x, shift and step.

    Channels last is its own layout: viewed as (outer, C, 1), the loops would run over a
    last dimension of size 1, unvectorised.
    """
    grad_x, step_terms = _backward_math(grad_out, x, shift, step, q_min, q_max, phi_k)
    return grad_x.to(x.dtype), grad_x.sum(dim=0), step_terms.sum()


# Separate functions, so that the compiled versions keep separate small graph caches.
PLAIN_KERNELS = Kernels(_plain_forward, _plain_backward, compilable=True)
CHANNEL_KERNELS = Kernels(_channel_forward, _channel_backward, compilable=True)
TOKEN_KERNELS = Kernels(_token_forward, _token_backward, compilable=True)


def _flat(x: torch.Tensor) -> torch.Tensor:
    """``x`` as a 1-D tensor that is not a view, so compiled graphs guard on one size only."""
    return x.reshape(-1).detach()


def _is_channel_shift(shift: torch.Tensor, x: torch.Tensor) -> bool:
    """Whether ``shift`` has shape (C, 1, ..., 1), C being a dimension of ``x``."""
    d = shift.dim()
    return (
        1 <= d <= x.dim()
        and shift.shape[0] == x.shape[-d]
        and all(size == 1 for size in shift.shape[1:])
    )


def _kernel_layout(x: torch.Tensor, shift: torch.Tensor | None):
    """The kernels for ``x`` and ``shift``, with a function reshaping a tensor of ``x``'s
    shape for them, and the shift reshaped for them (None without a shift).

    Without a shift, tensors are flattened; with a (C,) shift (channels last, e.g. tokens)
    they become (tokens, C); with a (C, 1, ..., 1) shift, (outer, C, inner).
    """
    if shift is None:
        return PLAIN_KERNELS, _flat, None
    channels, dims = shift.shape[0], shift.dim()
    if dims == 1:
        return TOKEN_KERNELS, lambda t: t.detach().reshape(-1, channels), shift.detach()
    inner = math.prod(x.shape[x.dim() - dims + 1 :])
    return (
        CHANNEL_KERNELS,
        lambda t: t.detach().reshape(-1, channels, inner),
        shift.detach().reshape(channels, 1),
    )


def tensor_step_forward(x, shift, step, q_min, q_max):
    """The fake-quantized ``x`` for one step (detached) and an optional channel shift.

    Frozen models (:mod:`qsr_plugin.export.frozen_layers`) call it too, so that they compute
    with the same kernels, and return the same memory layout, as the training quantizers.
    """
    kernels, view, shift_view = _kernel_layout(x, shift)
    shift_args = () if shift_view is None else (shift_view,)
    return kernels.forward(view(x), *shift_args, step, q_min, q_max).view(x.shape)


class _TensorStepFakeQuantize(torch.autograd.Function):
    """One step for the tensor, an optional per-channel shift; compiled kernels.

    Saves the input rather than the quotient ``v``: layers keep their input for their own
    backward pass anyway, and the backward kernel recomputes ``v`` for free while it reads.
    The shift is added inside the kernels, and its gradient reduced there too, so each
    direction is a single compiled call.
    """

    @staticmethod
    def forward(ctx, x, shift, step, q_min, q_max, grad_scale, phi_k):
        step_value = step.detach()
        ctx.save_for_backward(x, shift, step_value, q_min, q_max)
        ctx.grad_scale, ctx.phi_k = grad_scale, phi_k
        return tensor_step_forward(x, shift, step_value, q_min, q_max)

    @staticmethod
    def backward(ctx, grad_out):
        x, shift, step, q_min, q_max = ctx.saved_tensors
        kernels, view, shift_view = _kernel_layout(x, shift)
        shift_args = () if shift_view is None else (shift_view,)
        grads = kernels.backward(
            view(grad_out), view(x), *shift_args, step, q_min, q_max, ctx.phi_k
        )
        grad_shift = None
        if kernels is PLAIN_KERNELS:
            grad_x, grad_step = grads
        elif kernels is TOKEN_KERNELS:
            grad_x, grad_shift, grad_step = grads
        else:  # (outer, C) partial sums
            grad_x, shift_partials, step_partials = grads
            grad_shift = shift_partials.sum(dim=0).view(shift.shape)
            grad_step = step_partials.sum()
        return (
            grad_x.view(x.shape),
            None if grad_shift is None else grad_shift.to(shift.dtype),
            (grad_step * ctx.grad_scale).to(step.dtype),
            None,
            None,
            None,
            None,
        )


class _BroadcastFakeQuantize(torch.autograd.Function):
    """Step (and shift) of any broadcastable shape, e.g. one step per output channel."""

    @staticmethod
    def forward(ctx, x, shift, step, q_min, q_max, grad_scale, phi_k):
        ctx.save_for_backward(x, shift, step, q_min, q_max)
        ctx.grad_scale, ctx.phi_k = grad_scale, phi_k
        return _forward_math(x, shift, step, q_min, q_max)

    @staticmethod
    def backward(ctx, grad_out):
        x, shift, step, q_min, q_max = ctx.saved_tensors
        grad_shifted, step_terms = _backward_math(grad_out, x, shift, step, q_min, q_max, ctx.phi_k)
        grad_step = (step_terms.sum_to_size(step.shape) * ctx.grad_scale).to(step.dtype)
        grad_shift = (
            None if shift is None else grad_shifted.sum_to_size(shift.shape).to(shift.dtype)
        )
        return grad_shifted.to(x.dtype), grad_shift, grad_step, None, None, None, None


def _needs_gradient(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


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
    per_tensor = step.dim() == 0 and (shift is None or _is_channel_shift(shift, x))
    if per_tensor and not _needs_gradient(x, step, shift):  # inference: no autograd node
        return tensor_step_forward(x, shift, step.detach(), q_min, q_max)
    function = _TensorStepFakeQuantize if per_tensor else _BroadcastFakeQuantize
    return function.apply(x, shift, step, q_min, q_max, grad_scale, phi_k)


def round_straight_through(x: torch.Tensor) -> torch.Tensor:
    """``round(x)`` in the forward pass, identity gradient in the backward pass."""
    return x + (x.round() - x).detach()
