"""The fused learned-step quantizer against QuantSR's closed forms."""

import math

import pytest
import torch

from qsr_plugin.quantizers import LearnedStepActivationQuantizer
from qsr_plugin.quantizers._kernels import use_compiled_kernels
from qsr_plugin.quantizers._rounding import (
    learned_step_fake_quantize,
    phi,
    phi_derivative,
)


def test_phi_maps_each_interval_onto_itself_continuously():
    r = torch.tensor([0.0, 0.5, 1.0])
    assert torch.allclose(phi(r, 1.0), r, atol=1e-7)


def test_phi_derivative_matches_the_closed_form_values_at_edges_and_centre():
    k = 1.0
    edge = k / (2 * math.tanh(k / 2)) / math.cosh(k / 2) ** 2
    centre = k / (2 * math.tanh(k / 2))
    values = phi_derivative(torch.tensor([0.0, 0.5, 1.0]), k)
    assert values.tolist() == pytest.approx([edge, centre, edge], rel=1e-6)
    assert edge == pytest.approx(0.851, abs=1e-3) and centre == pytest.approx(1.082, abs=1e-3)


@pytest.mark.parametrize("k", [0.5, 1.0, 3.0])
def test_phi_derivative_is_the_derivative_of_phi(k):
    r = torch.linspace(0.01, 0.99, 50, dtype=torch.float64).requires_grad_()
    (grad,) = torch.autograd.grad(phi(r, k).sum(), r)
    assert torch.allclose(grad, phi_derivative(r.detach(), k))


def test_k_zero_is_straight_through():
    r = torch.linspace(0, 0.99, 7)
    assert torch.equal(phi(r, 0.0), r)
    assert torch.equal(phi_derivative(r, 0.0), torch.ones_like(r))


def _closed_form(x, tau, s, q_min, q_max, g, k, grad_out):
    """QuantSR's forward and gradients, written out from the formulas."""
    v = (x + tau) / s
    q = v.clamp(q_min, q_max).round()
    inside = ((v >= q_min) & (v <= q_max)).double()
    slope = phi_derivative(v - v.floor(), k) * inside
    grad_x = grad_out * slope
    return {
        "y": q * s,
        "x": grad_x,
        "tau": grad_x.sum(dim=(0, 2, 3)).view(tau.shape),
        "s": g * (grad_out * (q - v * slope)).sum(),
    }


@pytest.mark.parametrize("k", [0.0, 1.0, 2.0])
@pytest.mark.parametrize("signed", [True, False])
def test_fused_forward_and_gradients_equal_the_closed_form(k, signed):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 5, generator=gen, dtype=torch.float64) * 2
    tau = torch.randn(3, 1, 1, generator=gen, dtype=torch.float64) * 0.1
    s = torch.tensor(0.3, dtype=torch.float64)
    q_min, q_max = (-8.0, 7.0) if signed else (0.0, 15.0)
    g = 1 / math.sqrt(x.numel() * q_max)
    grad_out = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    expected = _closed_form(x, tau, s, q_min, q_max, g, k, grad_out)

    leaves = [t.clone().requires_grad_() for t in (x, tau, s)]
    y = learned_step_fake_quantize(
        leaves[0],
        leaves[2],
        torch.tensor(q_min, dtype=torch.float64),
        torch.tensor(q_max, dtype=torch.float64),
        g,
        k,
        shift=leaves[1],
    )
    y.backward(grad_out)
    assert torch.equal(y.detach(), expected["y"])
    for leaf, key in zip(leaves, ["x", "tau", "s"], strict=True):
        assert torch.allclose(leaf.grad, expected[key], rtol=1e-10, atol=1e-12), key
    # Some inputs must be clipped, so the zero-gradient branch is exercised.
    assert (expected["x"] == 0).any() and (expected["x"] != 0).any()


def test_fused_gradients_equal_plain_autograd_through_phi():
    """Autograd through a differentiable phi-rounding gives the fused gradients."""
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(4, 6, dtype=torch.float64, generator=gen) * 3).requires_grad_()
    s = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    q_min, q_max, g, k = -4.0, 3.0, 0.1, 1.0

    s_scaled = s * g + (s - s * g).detach()
    v = (x / s_scaled).clamp(q_min, q_max)
    floor = v.floor().detach()
    smooth = floor + phi(v - floor, k)
    y_ref = (smooth + (v.round() - smooth).detach()) * s_scaled
    grad_out = torch.randn(x.shape, dtype=torch.float64, generator=gen)
    ref = torch.autograd.grad(y_ref, (x, s), grad_out)

    x2, s2 = x.detach().clone().requires_grad_(), s.detach().clone().requires_grad_()
    y = learned_step_fake_quantize(
        x2, s2, torch.tensor(q_min).double(), torch.tensor(q_max).double(), g, k
    )
    fused = torch.autograd.grad(y, (x2, s2), grad_out)
    assert torch.equal(y, y_ref.detach())
    for a, b in zip(ref, fused, strict=True):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


def test_per_channel_step_gets_a_per_channel_gradient():
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    step = torch.full((4, 1, 1, 1), 0.2, dtype=torch.float64, requires_grad=True)
    y = learned_step_fake_quantize(
        w, step, torch.tensor(-8.0).double(), torch.tensor(7.0).double(), 1.0, 1.0
    )
    y.sum().backward()
    v = w / 0.2
    q = v.clamp(-8, 7).round()
    slope = phi_derivative(v - v.floor(), 1.0) * ((v >= -8) & (v <= 7))
    expected = (q - v * slope).sum(dim=(1, 2, 3)).view(4, 1, 1, 1)
    assert torch.allclose(step.grad, expected)


@pytest.mark.parametrize("layout", ["tokens", "broadcast shift"])
def test_other_shift_layouts_equal_the_closed_form(layout):
    """A per-channel shift on (B, T, C) tokens, and a shift of any other broadcast shape."""
    gen = torch.Generator().manual_seed(2)
    if layout == "tokens":
        x = torch.randn(2, 7, 5, generator=gen, dtype=torch.float64) * 2
        tau = torch.randn(5, generator=gen, dtype=torch.float64) * 0.1
        reduced = (0, 1)
    else:
        x = torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64) * 2
        tau = torch.randn(1, 3, 1, 4, generator=gen, dtype=torch.float64) * 0.1
        reduced = (0, 2)
    s, q_min, q_max, k, g = torch.tensor(0.4, dtype=torch.float64), -4.0, 3.0, 1.0, 0.05
    grad_out = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    v = (x + tau) / s
    q = v.clamp(q_min, q_max).round()
    slope = phi_derivative(v - v.floor(), k) * ((v >= q_min) & (v <= q_max)).double()
    expected_tau = (grad_out * slope).sum(dim=reduced, keepdim=layout != "tokens")

    leaves = [t.clone().requires_grad_() for t in (x, tau, s)]
    codes = torch.tensor(q_min, dtype=torch.float64), torch.tensor(q_max, dtype=torch.float64)
    y = learned_step_fake_quantize(leaves[0], leaves[2], *codes, g, k, shift=leaves[1])
    y.backward(grad_out)
    assert torch.equal(y.detach(), q * s)
    assert torch.allclose(leaves[0].grad, grad_out * slope, rtol=1e-10, atol=1e-12)
    assert torch.allclose(leaves[1].grad, expected_tau, rtol=1e-10, atol=1e-12)
    expected_s = g * (grad_out * (q - v * slope)).sum()
    assert torch.allclose(leaves[2].grad, expected_s, rtol=1e-10, atol=1e-12)


def test_inference_without_gradients_gives_the_training_output():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 6, 6, generator=gen)
    tau = torch.randn(4, 1, 1, generator=gen) * 0.1
    step = torch.tensor(0.3, requires_grad=True)
    codes = torch.tensor(-8.0), torch.tensor(7.0)
    with torch.no_grad():
        inferred = learned_step_fake_quantize(x, step, *codes, 1.0, 1.0, shift=tau)
    trained = learned_step_fake_quantize(x, step, *codes, 1.0, 1.0, shift=tau)
    assert not inferred.requires_grad and trained.requires_grad
    assert torch.equal(inferred, trained.detach())
    s = step.detach()
    assert torch.equal(inferred, ((x + tau) / s).clamp(-8, 7).round() * s)


def _initialised_quantizer(bits, shift, x):
    quantizer = LearnedStepActivationQuantizer(bits, x.shape[1], -3, shift=shift).train()
    quantizer(x.float())
    if shift:
        with torch.no_grad():
            quantizer.shift.copy_(torch.linspace(-0.05, 0.05, x.shape[1]).view(-1, 1, 1))
    return quantizer


@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize(("dtype", "bits"), [(torch.float16, 8), (torch.bfloat16, 4)])
def test_autocast_codes_are_the_fp32_codes(eager_kernels, dtype, bits, shift):
    gen = torch.Generator().manual_seed(4)
    conv = torch.nn.Conv2d(3, 16, 3, padding=1)
    lr = torch.rand(2, 3, 24, 24, generator=gen)
    with torch.autocast("cpu", dtype=dtype):
        x = conv(lr)
    quantizer = _initialised_quantizer(bits, shift, x)
    with torch.autocast("cpu", dtype=dtype):
        y = quantizer(x)
    assert y.dtype == dtype
    reference = quantizer(x.float())  # the same quantizer on the widened input
    assert torch.equal(y, reference.to(dtype))
    step = quantizer.step.detach()
    codes = (reference / step).round()
    assert torch.equal((y.float() / step).round(), codes)
    if dtype == torch.float16:  # 8-bit codes times the step are exact to fp16's precision
        assert (y.float() / step - codes).abs().max() <= codes.abs().max() * 2.0**-11


@pytest.mark.parametrize("shift", [False, True])
def test_fp16_step_gradient_is_finite_at_recipe_size(eager_kernels, shift):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(16, 64, 48, 48, generator=gen).abs().half()  # one x4 recipe activation
    quantizer = _initialised_quantizer(2, shift, x)
    grad_out = torch.full(x.shape, 4.0, dtype=torch.float16)  # a loss-scaled gradient
    x.requires_grad_()
    quantizer(x).backward(grad_out)
    wide = x.detach().float().requires_grad_()
    step_grad = quantizer.step.grad.clone()
    quantizer.step.grad = None
    quantizer(wide).backward(grad_out.float())
    assert x.grad.dtype == torch.float16 and quantizer.step.grad.dtype == torch.float32
    assert torch.isfinite(step_grad) and torch.isfinite(x.grad).all()
    assert step_grad.item() == pytest.approx(quantizer.step.grad.item(), rel=1e-4)
    # the unscaled sum overflows fp16: summing in the input's dtype would give inf
    unscaled = step_grad.item() * math.sqrt(x.numel() * 3)
    assert abs(unscaled) > torch.finfo(torch.float16).max


@pytest.mark.slow
def test_compiled_kernels_widen_half_inputs_too():
    with use_compiled_kernels(True):
        x = torch.randn(2, 8, 12, 12, generator=torch.Generator().manual_seed(6)).half()
        quantizer = _initialised_quantizer(8, False, x)
        x.requires_grad_()
        y = quantizer(x)
        y.backward(torch.full_like(y, 4.0))
    assert y.dtype == x.grad.dtype == torch.float16
    assert torch.equal(y, quantizer(x.detach().float()).half())
