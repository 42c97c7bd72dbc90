"""The float and QAT training loops on real photos with BasicSR's EDSR.

EDSR (unlike MSRResNet, whose output starts as a bilinear upscale) starts far from a good
output, so a few steps visibly lower its loss.
"""

import copy
import functools
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import qsr_plugin
from qsr_plugin import mixed_precision
from qsr_plugin._basicsr_compat import import_basicsr
from qsr_plugin.mixed_precision import MixedPrecision
from qsr_plugin.quantizers import quantizers_of
from qsr_plugin.sr_data import PatchSampler, builtin_images
from qsr_plugin.sr_training import (
    calibrate_from_sampler,
    depth_key,
    progress_bar,
    shortcut_parameters,
    train_float,
    train_qat,
)

pytestmark = pytest.mark.usefixtures("eager_kernels")

SCALE = 2


@functools.lru_cache
def training_photos():
    return tuple(builtin_images()["train"].items())


@functools.lru_cache
def shared_sampler():
    # Building a sampler downscales every photo; reseeding one is much cheaper.
    return PatchSampler(training_photos(), SCALE, patch_size=12)


def sampler(seed=0):
    reseeded = shared_sampler()
    reseeded.generator.manual_seed(seed)
    return reseeded


def small_edsr(seed=0, num_block=3):
    import_basicsr()
    from basicsr.archs.edsr_arch import EDSR

    torch.manual_seed(seed)
    return EDSR(3, 3, num_feat=16, num_block=num_block, upscale=SCALE)


@functools.lru_cache
def check_batch():
    """A fixed batch of real patches, not drawn by the training runs (seed 123)."""
    return sampler(123).sample(16)


def check_loss(model, depth=None):
    lr, hr = check_batch()
    was_training = model.training
    model.eval()
    with torch.no_grad():
        if depth is None:
            loss = F.l1_loss(model(lr), hr).item()
        else:
            with qsr_plugin.use_depth(model, depth):
                loss = F.l1_loss(model(lr), hr).item()
    model.train(was_training)
    return loss


def test_float_training_lowers_the_l1_loss_on_real_photos():
    model = small_edsr()
    before = check_loss(model)
    history = train_float(model, sampler(), steps=20, lr=2e-3, batch_size=4)
    assert [r.step for r in history] == list(range(1, 21))
    assert check_loss(model) < 0.6 * before
    assert history[-1].loss < 0.6 * history[0].loss
    assert history[0].lr == pytest.approx(2e-3) and history[-1].lr < 2e-5  # cosine decay


@pytest.mark.slow
def test_training_is_reproducible_for_a_seed_and_differs_for_another():
    def trained(sampler_seed):
        model = small_edsr()
        train_float(model, sampler(sampler_seed), steps=4, batch_size=4)
        qsr_plugin.quantize(model, bits=4, depth_variants=[3, 1])
        calibrate_from_sampler(model, sampler(sampler_seed), batches=1, batch_size=4)
        train_qat(model, sampler(sampler_seed), steps=3, batch_size=4)
        return model.state_dict()

    first, second, other = trained(0), trained(0), trained(1)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


@pytest.mark.slow
def test_qat_trains_every_depth_jointly_and_lowers_each_loss():
    model = small_edsr()
    train_float(model, sampler(), steps=20, lr=2e-3, batch_size=4)
    qsr_plugin.quantize(model, bits=2, depth_variants=[4, 3, 1])
    calibrate_from_sampler(model, sampler(1), batches=2, batch_size=4)
    assert all(bool(q.initialized) for _, q in quantizers_of(model))
    before = {d: check_loss(model, d) for d in (4, 3, 1)}
    scale_before = model.body.residual_scale[0, 3].item()  # of the grown fourth block

    history = train_qat(model, sampler(2), steps=12, lr=1e-3, batch_size=4)
    assert set(history[0].losses) == {depth_key(d) for d in (4, 3, 1)}
    assert history[0].loss == pytest.approx(sum(history[0].losses.values()), rel=1e-6)
    after = {d: check_loss(model, d) for d in (4, 3, 1)}
    assert all(after[d] < 0.95 * before[d] for d in before), (before, after)
    assert model.body.residual_scale[0, 3].item() != scale_before


def test_shortcut_and_residual_scales_can_get_their_own_learning_rate():
    model = small_edsr()
    qsr_plugin.quantize(model, bits=4, depth_variants=[4, 2])
    calibrate_from_sampler(model, sampler(), batches=1, batch_size=2)
    body = model.body
    assert shortcut_parameters(model) == [body.shortcut_scale, body.residual_scale]
    scales, alpha = body.residual_scale.detach().clone(), body.shortcut_scale.detach()
    alpha, weight = alpha.clone(), body[0].conv1.weight.detach().clone()
    train_qat(model, sampler(), steps=1, lr=1e-4, shortcut_lr=0.05, batch_size=2)
    # Adam's first step moves every parameter with a gradient by its learning rate: the
    # scales of the blocks each variant runs, and no other.
    moved = (body.residual_scale.detach() - scales).abs()
    for row, depth in enumerate(body.depth_variants):
        for index in range(4):
            expected = 0.05 if index in body.plan()[depth] else 0.0
            assert moved[row, index].item() == pytest.approx(expected, rel=1e-3, abs=1e-7)
    assert (model.body.shortcut_scale.detach() - alpha).abs().max() == pytest.approx(0.05, rel=1e-3)
    assert (model.body[0].conv1.weight.detach() - weight).abs().max() <= 1.001e-4


def test_calibration_runs_every_variant_whatever_the_active_depth():
    model = small_edsr()
    qsr_plugin.quantize(model, bits=4, depth_variants=[3, 1])
    qsr_plugin.set_depth(model, 1)
    calibrate_from_sampler(model, sampler(), batches=1, batch_size=2)
    assert all(bool(q.initialized) for _, q in quantizers_of(model))
    assert qsr_plugin.active_depth(model) == 1


def test_callbacks_and_progress_bar_see_every_step(capsys):
    seen = []
    with progress_bar(3, "float") as bar:
        train_float(small_edsr(), sampler(), 3, batch_size=2, callbacks=[bar, seen.append])
    assert [r.step for r in seen] == [1, 2, 3] and all(r.total == 3 for r in seen)
    err = capsys.readouterr().err
    assert "float" in err and "3/3" in err and "L1 float=" in err


def test_bad_training_arguments_are_refused():
    model = small_edsr()
    with pytest.raises(ValueError, match="steps must be a positive int, got 0"):
        train_float(model, sampler(), steps=0)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        train_float(model, sampler(), steps=1, batch_size=-1)
    with pytest.raises(ValueError, match="lr must be a positive learning rate"):
        train_float(model, sampler(), steps=1, lr=0.0)
    quantized = qsr_plugin.quantize(copy.deepcopy(model), bits=4)
    with pytest.raises(ValueError, match="depth_weights needs a model with depth variants"):
        train_qat(quantized, sampler(), steps=1, depth_weights={4: 1.0})
    with pytest.raises(ValueError, match="shortcut_lr needs a model with depth variants"):
        train_qat(quantized, sampler(), steps=1, shortcut_lr=1e-2)
    with pytest.raises(ValueError, match="shortcut_lr must be a positive learning rate"):
        train_qat(quantized, sampler(), steps=1, shortcut_lr=-1.0)


def test_divergence_stops_training_with_a_clear_error():
    model = small_edsr()
    with torch.no_grad():
        model.conv_after_body.bias.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="training diverged by step 1.*lower lr"):
        train_float(model, sampler(), steps=2, batch_size=2)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_qat_with_amp_trains_under_autocast_and_lowers_the_loss(amp):
    model = small_edsr()
    qsr_plugin.quantize(model, bits=4, depth_variants=[3, 1])
    calibrate_from_sampler(model, sampler(1), batches=1, batch_size=4)
    before = check_loss(model, 3)
    dtypes = set()
    hook = model.body[0].conv1.register_forward_hook(lambda m, i, out: dtypes.add(out.dtype))
    history = train_qat(model, sampler(2), steps=6, lr=1e-3, batch_size=4, amp=amp)
    hook.remove()
    assert dtypes == {MixedPrecision(amp, torch.device("cpu")).dtype}
    assert all(math.isfinite(r.loss) for r in history)
    steps = [q.step for _, q in quantizers_of(model) if hasattr(q, "step")]
    assert all(torch.isfinite(s.grad).all() and s.dtype == torch.float32 for s in steps)
    assert check_loss(model, 3) < before


def test_amp_values_and_unsupported_devices_name_the_option(monkeypatch):
    model = small_edsr()
    with pytest.raises(
        ValueError, match=r"amp must be 'bf16', 'fp16' or unset \(fp32\), got 'fp32'"
    ):
        train_qat(model, sampler(), steps=1, amp="fp32")
    monkeypatch.setattr(mixed_precision, "_autocast_supports", lambda device, dtype: False)
    with pytest.raises(
        ValueError, match=r"amp: fp16 autocast is not supported on cpu.*set amp to bf16"
    ):
        train_qat(model, sampler(), steps=1, amp="fp16")


def test_reports_come_every_report_every_steps_and_at_the_last():
    model = small_edsr()
    seen = []
    history = train_float(model, sampler(), steps=5, batch_size=2, callbacks=[seen.append])
    assert [r.step for r in history] == [1, 2, 3, 4, 5]
    qsr_plugin.quantize(model, bits=4, depth_variants=[3, 1])
    seen.clear()
    history = train_qat(
        model, sampler(), steps=5, batch_size=2, report_every=2, callbacks=[seen.append]
    )
    assert [r.step for r in history] == [2, 4, 5] and seen == history


class _CountHostReads(TorchDispatchMode):
    """Counts reads of tensor values by the host (``.item()``, ``bool(tensor)``)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("method", ["quantsr", "lsq"])
def test_a_joint_training_step_reads_nothing_back_from_the_device(method):
    model = small_edsr()
    qsr_plugin.quantize(model, bits=4, method=method, depth_variants=[4, 3, 1])
    calibrate_from_sampler(model, sampler(), batches=1, batch_size=2)
    lr, hr = sampler().sample(2)
    model.train()
    qsr_plugin.joint_variant_loss(model, lr, hr, F.l1_loss)[0].backward()  # warm caches
    with _CountHostReads() as reads:
        qsr_plugin.joint_variant_loss(model, lr, hr, F.l1_loss)[0].backward()
    assert reads.count == 0
    with _CountHostReads() as probe:  # the counter sees a read
        assert lr.sum().item() > 0
    assert probe.count == 1
