"""Quantizer initialisation, ranges, baselines, state and errors."""

import copy
import math

import pytest
import torch

from qsr_plugin.quantizers import (
    DoReFaActivationQuantizer,
    DoReFaWeightQuantizer,
    LearnedStepActivationQuantizer,
    LearnedStepWeightQuantizer,
    PAMSActivationQuantizer,
    PAMSWeightQuantizer,
)


def act_quantizer(bits=4, channels=3, **kwargs):
    return LearnedStepActivationQuantizer(bits, channels, channel_dim=-3, **kwargs)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_signed_activation_init_and_range(bits):
    x = torch.randn(2, 3, 8, 8)
    q = act_quantizer(bits).train()
    y = q(x)
    q_max = 2 ** (bits - 1) - 1
    assert bool(q.signed) and bool(q.initialized)
    assert q.step.item() == pytest.approx(2 * x.abs().mean().item() / math.sqrt(q_max))
    codes = y / q.step
    assert torch.allclose(codes, codes.round(), atol=1e-4)
    assert codes.min() >= -(2 ** (bits - 1)) - 1e-4 and codes.max() <= q_max + 1e-4


def test_unsigned_activation_init_uses_the_full_positive_range():
    x = torch.rand(2, 3, 8, 8)
    q = act_quantizer(4).train()
    y = q(x)
    assert not bool(q.signed)
    assert q.step.item() == pytest.approx(2 * x.abs().mean().item() / math.sqrt(15))
    assert (y >= 0).all() and (y / q.step).round().max() <= 15


@pytest.mark.parametrize(("minimum", "signed"), [(-1e-6, False), (-1e-4, True)])
def test_signedness_threshold_is_minus_1e_minus_5(minimum, signed):
    x = torch.rand(1, 3, 4, 4)
    x[0, 0, 0, 0] = minimum
    q = act_quantizer().train()
    q(x)
    assert bool(q.signed) is signed


def test_shift_is_per_channel_zero_initialised_and_learns():
    q = act_quantizer(4, channels=5).train()
    assert q.shift.shape == (5, 1, 1) and torch.equal(q.shift, torch.zeros(5, 1, 1))
    x = torch.randn(2, 5, 4, 4)
    q(x).pow(2).sum().backward()
    assert q.shift.grad.shape == (5, 1, 1) and q.shift.grad.abs().sum() > 0
    assert q.step.grad is not None


def test_token_activations_shift_on_last_dim():
    q = LearnedStepActivationQuantizer(4, 7, channel_dim=-1).train()
    assert q.shift.shape == (7,)
    assert q(torch.randn(2, 9, 7)).shape == (2, 9, 7)


def test_lsq_style_quantizer_has_no_shift():
    q = act_quantizer(shift=False, phi_k=0.0)
    assert q.shift is None


def test_weight_quantizer_per_tensor_and_per_channel_init():
    w = torch.randn(6, 4, 3, 3)
    per_tensor = LearnedStepWeightQuantizer(4, 6).train()
    per_tensor(w)
    assert per_tensor.step.shape == ()
    assert per_tensor.step.item() == pytest.approx(2 * w.abs().mean().item() / math.sqrt(7))
    per_channel = LearnedStepWeightQuantizer(4, 6, per_channel=True).train()
    y = per_channel(w)
    expected = 2 * w.abs().flatten(1).mean(1) / math.sqrt(7)
    assert torch.allclose(per_channel.step.flatten(), expected)
    codes = y / per_channel.step
    assert torch.allclose(codes, codes.round(), atol=1e-4)


def test_weight_grad_scale_uses_elements_per_step():
    w = torch.randn(6, 4, 3, 3)
    q = LearnedStepWeightQuantizer(4, 6, per_channel=True, phi_k=0.0).train()
    q(w)
    q.step.grad = None
    q(w).sum().backward()
    v = w / q.step.detach()
    inside = ((v >= -8) & (v <= 7)).float()
    raw = (v.clamp(-8, 7).round() - v * inside).flatten(1).sum(1)
    expected = raw / math.sqrt(36 * 7)
    assert torch.allclose(q.step.grad.flatten(), expected, atol=1e-5)


def test_all_zero_batch_gives_a_finite_positive_step_and_a_warning():
    q = act_quantizer().train()
    with pytest.warns(UserWarning, match="no magnitude"):
        y = q(torch.zeros(1, 3, 4, 4))
    assert torch.isfinite(q.step).all() and q.step.item() > 0
    assert torch.equal(y, torch.zeros_like(y))


def test_nan_in_the_initialisation_batch_is_refused():
    q = act_quantizer().train()
    q.name = "body.3.conv1.act_quant"
    x = torch.randn(1, 3, 4, 4)
    x[0, 1, 2, 2] = float("nan")
    with pytest.raises(ValueError, match=r"body\.3\.conv1\.act_quant .*NaN or Inf"):
        q(x)
    assert not bool(q.initialized)


def test_eval_without_initialisation_says_to_calibrate():
    q = act_quantizer().eval()
    with pytest.raises(RuntimeError, match=r"never initialised.*calibrate"):
        q(torch.randn(1, 3, 4, 4))


def test_state_dict_carries_the_initialisation_and_resuming_does_not_reinit():
    trained = act_quantizer().train()
    trained(torch.randn(2, 3, 4, 4))
    with torch.no_grad():
        trained.step.mul_(1.7)
        trained.shift.add_(0.05)
    state = trained.state_dict()
    assert set(state) == {"step", "shift", "num_bits", "initialized", "signed"}

    resumed = act_quantizer().train()
    resumed.load_state_dict(state)
    resumed(torch.rand(2, 3, 4, 4) * 100)  # would give another step and signedness
    assert torch.equal(resumed.step, trained.step) and bool(resumed.signed)


def test_loading_other_bits_names_the_key():
    four = act_quantizer(4).train()
    four(torch.randn(1, 3, 2, 2))
    two = act_quantizer(2)
    with pytest.raises(ValueError, match=r"num_bits: the checkpoint holds a 4-bit .* 2-bit"):
        two.load_state_dict(four.state_dict())


def test_loading_per_channel_steps_into_per_tensor_names_the_key():
    source = LearnedStepWeightQuantizer(4, 6, per_channel=True)
    target = LearnedStepWeightQuantizer(4, 6)
    with pytest.raises(ValueError, match=r"step: shape \(6, 1, 1, 1\) .*per-channel"):
        target.load_state_dict(source.state_dict())


def test_deepcopy_and_dtype_conversion_keep_the_state():
    q = act_quantizer().train()
    q(torch.randn(1, 3, 4, 4))
    clone = copy.deepcopy(q).double().eval()
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    assert clone.step.dtype == torch.float64 and clone.signed.dtype == torch.bool
    assert torch.allclose(clone(x), q.eval()(x.float()).double(), atol=1e-6)


@pytest.mark.parametrize("bits", [1, 9, 16, 0, -4])
def test_bits_out_of_range_are_refused(bits):
    with pytest.raises(ValueError, match=r"bits must be in 2\.\.8 \(or 32"):
        act_quantizer(bits)


@pytest.mark.parametrize("bits", [4.0, "4", True, None])
def test_non_int_bits_are_refused(bits):
    with pytest.raises(ValueError, match="bits must be an int"):
        LearnedStepWeightQuantizer(bits, 4)


def test_per_channel_without_channels_is_refused():
    with pytest.raises(ValueError, match="per_channel=True needs a layer with output channels"):
        LearnedStepWeightQuantizer(4, None, per_channel=True)


def test_negative_phi_k_is_refused():
    with pytest.raises(ValueError, match="phi_k must be a number >= 0"):
        act_quantizer(phi_k=-1.0)


# -- baselines ---------------------------------------------------------------------------
def test_dorefa_activation_clips_to_unit_range_with_uniform_levels():
    x = torch.linspace(-1.005, 1.995, 301, requires_grad=True)  # no point on a bound
    y = DoReFaActivationQuantizer(2)(x)
    assert torch.allclose(torch.unique(y), torch.tensor([0.0, 1 / 3, 2 / 3, 1.0]))
    y.sum().backward()
    inside = ((x >= 0) & (x <= 1)).float()
    assert torch.equal(x.grad, inside)


def test_dorefa_weights_follow_the_tanh_normalisation():
    w = torch.randn(8, 4, 3, 3)
    y = DoReFaWeightQuantizer(3)(w)
    t = torch.tanh(w)
    unit = t / (2 * t.abs().max()) + 0.5
    expected = 2 * torch.round(unit * 7) / 7 - 1
    assert torch.allclose(y, expected)
    assert y.abs().max() <= 1.0 + 1e-6 and torch.unique(y).numel() <= 8


def test_pams_activation_init_and_pact_gradient():
    x = torch.randn(2, 3, 6, 6)
    q = PAMSActivationQuantizer(4).train()
    q(x)
    assert q.alpha.item() == pytest.approx(x.abs().max().item())
    with torch.no_grad():
        q.alpha.fill_(1.0)
    xg = x.clone().requires_grad_()
    y = q(xg)
    expected = torch.round(x.clamp(-1, 1) * 7) / 7
    assert torch.allclose(y, expected, atol=1e-6)
    y.sum().backward()
    outside = x.abs() > 1
    assert q.alpha.grad.item() == pytest.approx(torch.sign(x[outside]).sum().item())
    assert torch.equal(xg.grad, (~outside).float())


def test_pams_weights_use_the_max_abs_bound():
    w = torch.randn(5, 3, 3, 3)
    y = PAMSWeightQuantizer(4, per_channel=True)(w)
    bound = w.abs().flatten(1).amax(1).view(5, 1, 1, 1)
    assert torch.allclose(y, torch.round(w / bound * 7) * bound / 7)
    assert torch.allclose(y.abs().flatten(1).amax(1), bound.flatten())


def test_dataparallel_replicas_share_the_code_bounds_cache_of_their_device(eager_kernels):
    quantizer = LearnedStepActivationQuantizer(4, 3, -3).train()
    x = torch.randn(2, 3, 5, 5)
    quantizer(x)  # initialises
    quantizer(x)
    replica = quantizer._replicate_for_data_parallel()  # what DataParallel runs per device
    replica._parameters = dict(quantizer._parameters)
    replica._buffers = dict(quantizer._buffers)
    replica.to("meta")(x.to("meta"))
    # a later replica on that device finds the bounds the first one built
    later = quantizer._replicate_for_data_parallel()
    bounds = later.codes(x.to("meta"))
    assert bounds is replica.codes(x.to("meta")) and bounds[0].device.type == "meta"
    assert quantizer.codes(x)[0].dtype == torch.float32


HALF_PRECISION_CASES = {
    "rlq activation": (lambda: LearnedStepActivationQuantizer(4, 4, -3), (2, 4, 5, 5)),
    "lsq activation": (lambda: LearnedStepActivationQuantizer(4, 4, -3, shift=False), (2, 4, 5, 5)),
    "rlq weight": (lambda: LearnedStepWeightQuantizer(4, 8, per_channel=True), (8, 4, 3, 3)),
    "dorefa activation": (lambda: DoReFaActivationQuantizer(4), (2, 4, 5, 5)),
    "dorefa weight": (lambda: DoReFaWeightQuantizer(4), (8, 4, 3, 3)),
    "pams activation": (lambda: PAMSActivationQuantizer(4), (2, 4, 5, 5)),
    "pams weight": (lambda: PAMSWeightQuantizer(4, per_channel=True), (8, 4, 3, 3)),
}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", HALF_PRECISION_CASES)
def test_every_quantizer_computes_half_inputs_in_fp32(eager_kernels, name, dtype):
    build, shape = HALF_PRECISION_CASES[name]
    quantizer = build().train()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(7))
    quantizer(x)  # initialises the data-driven ones
    half = x.to(dtype).requires_grad_()
    y = quantizer(half)
    assert y.dtype == dtype
    assert torch.equal(y, quantizer(half.detach().float()).to(dtype))
    y.sum().backward()
    assert half.grad.dtype == dtype and torch.isfinite(half.grad).all()
