"""Depth variants that pay off: growth that trains, importance plans, distillation, and
the refusal of variants that leave blocks unused."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from _deploy_models import arch

import qsr_plugin
from qsr_plugin.distillation import DistillConfig, FloatTeacher
from qsr_plugin.rewrite.importance import replan_by_importance, replan_steps
from qsr_plugin.sr_data import PatchSampler, find_image_set, load_hr_images
from qsr_plugin.sr_training import calibrate_from_sampler, train_float, train_qat


def msrresnet(blocks: int = 4):
    return arch("MSRResNet", num_feat=16, num_block=blocks, upscale=2)


def set5_sampler(seed: int = 0) -> PatchSampler:
    return PatchSampler(load_hr_images(find_image_set("Set5")), 2, 12, seed=seed)


@pytest.fixture(scope="module")
def float_model():
    """A 4-block MSRResNet trained briefly in float on Set5 patches (blocks differ)."""
    model = msrresnet()
    train_float(model, set5_sampler(), steps=30, lr=2e-3, batch_size=4)
    return model.eval()


def quantized(float_model, **settings):
    return qsr_plugin.quantize(copy.deepcopy(float_model), **{"bits": 4, **settings})


# -- growth ------------------------------------------------------------------------------
def test_the_original_depth_of_a_grown_model_is_the_ungrown_model(float_model):
    x = set5_sampler(3).sample(2)[0]
    grown = quantized(float_model, depth_variants=[8, 4, 2])
    plain = quantized(float_model)
    calibrate_from_sampler(plain, set5_sampler(), batches=1, batch_size=2)
    # Same quantizer state for the shared layers, then the 4-block variant equals the plain model.
    grown.load_state_dict(plain.state_dict(), strict=False)
    with torch.no_grad(), qsr_plugin.use_depth(grown, 4):
        assert torch.equal(grown.eval()(x), plain.eval()(x))
        exact_float = quantized(float_model, bits=32, depth_variants=[8, 4, 2])
        with qsr_plugin.use_depth(exact_float, 4):
            assert torch.equal(exact_float.eval()(x), float_model(x))


def test_grown_blocks_train_with_one_optimiser_at_one_learning_rate(float_model):
    model = quantized(float_model, depth_variants=[8, 4])
    calibrate_from_sampler(model, set5_sampler(), batches=1, batch_size=2)
    grown = {i: model.body[i].conv1.weight.detach().clone() for i in range(4, 8)}
    history = train_qat(model, set5_sampler(1), steps=3, lr=1e-3, batch_size=2)
    assert len(history) == 3
    for index, before in grown.items():
        assert not torch.equal(model.body[index].conv1.weight.detach(), before), index


# -- unused blocks -----------------------------------------------------------------------
def test_variants_that_leave_blocks_unused_are_refused_with_the_fix():
    model = arch("MSRResNet", num_feat=16, num_block=8, upscale=2)
    with pytest.raises(
        ValueError,
        match=r"leave body\.1, body\.3, body\.5, body\.7 of the 8-block body 'body' unused.*"
        r"add 8 to depth_variants \(e\.g\. \[8, 4, 2, 1\]\)",
    ):
        qsr_plugin.quantize(model, bits=4, depth_variants=[4, 2, 1])
    assert qsr_plugin.quantization_record(model) is None
    with pytest.raises(ValueError, match=r"leave body\.1, body\.2, body\.3 of .*\[4, 1\]"):
        qsr_plugin.quantize(msrresnet(), bits=4, depth_variants=[1], depth_members={1: [0]})


def test_an_unknown_depth_policy_is_refused_by_name():
    with pytest.raises(ValueError, match="depth_policy must be one of spread, prefix, importance"):
        qsr_plugin.QuantizeConfig(depth_variants=[4, 2], depth_policy="learned")


# -- importance --------------------------------------------------------------------------
def test_importance_drops_the_least_critical_blocks_first(float_model):
    model = quantized(float_model, depth_variants=[4, 2, 1], depth_policy="importance")
    calibrate_from_sampler(model, set5_sampler(), batches=1, batch_size=4)
    batches = [set5_sampler(5).sample(4) for _ in range(2)]
    with torch.no_grad():
        model.body.shortcut_scale[2] = 0.0  # block 2 now erases the features: most critical
    body = model.body

    def loss_skipping(blocks) -> float:
        with torch.no_grad(), body.skipping(blocks):
            return sum(float(F.l1_loss(model.eval()(lr), hr)) for lr, hr in batches) / 2

    base = loss_skipping([])
    rises = {i: loss_skipping([i]) - base for i in range(4)}  # the first elimination round
    plans = replan_by_importance(model, batches)
    plan = body.plan()
    assert plans["body"] == plan
    assert plan[1] == [2] and 2 in plan[2] and set(plan[1]) < set(plan[2]) < set(plan[4])
    first_dropped = min(range(4), key=lambda i: (rises[i], i))
    assert first_dropped not in plan[2]
    assert body.block_importance[first_dropped].item() == pytest.approx(
        rises[first_dropped], rel=1e-4, abs=1e-7
    )


def test_the_importance_plan_is_stored_reloaded_and_deterministic(float_model, tmp_path):
    def trained():
        torch.manual_seed(0)
        model = quantized(float_model, depth_variants=[4, 2, 1], depth_policy="importance")
        calibrate_from_sampler(model, set5_sampler(), batches=1, batch_size=4)
        train_qat(model, set5_sampler(1), steps=4, lr=1e-3, batch_size=4)
        return model

    first, second = trained(), trained()
    assert first.body.plan() == second.body.plan()
    assert torch.equal(first.body.block_importance, second.body.block_importance)
    assert first.body.block_importance.abs().sum() > 0  # measured during training
    state = first.state_dict()
    assert {"body.membership", "body.block_importance"} <= set(state)
    fresh = quantized(float_model, depth_variants=[4, 2, 1], depth_policy="importance")
    fresh.load_state_dict(state)
    assert fresh.body.plan() == first.body.plan()
    path = qsr_plugin.save(first, tmp_path / "importance.safetensors")
    target = quantized(float_model, depth_variants=[4, 2, 1], depth_policy="importance")
    qsr_plugin.calibrate(target, set5_sampler().sample(1)[0])
    qsr_plugin.load(path, target)
    assert target.body.plan() == first.body.plan()
    x = set5_sampler(9).sample(1)[0]
    with torch.no_grad():
        for depth in (4, 2, 1):
            with qsr_plugin.use_depth(first, depth), qsr_plugin.use_depth(target, depth):
                assert torch.equal(first.eval()(x), target.eval()(x)), depth


def test_replanning_happens_at_the_set_fractions_of_training():
    assert replan_steps(100) == {0, 25, 50}
    assert replan_steps(1) == {0}


# -- distillation ------------------------------------------------------------------------
def test_distillation_adds_output_and_per_block_feature_terms(float_model):
    model = quantized(float_model, bits=2, depth_variants=[8, 4, 2])
    calibrate_from_sampler(model, set5_sampler(), batches=1, batch_size=2)
    teacher = FloatTeacher(float_model, model, DistillConfig(output=1.0, features=0.5))
    lr, hr = set5_sampler(2).sample(2)
    total, parts = qsr_plugin.rewrite.variants.joint_variant_losses(
        model, lr, hr, F.l1_loss, teacher=teacher
    )
    assert set(parts) == {8, 4, 2}
    references = teacher.references(lr)
    assert sorted(references.features) == [0, 1, 2, 3]
    for depth, depth_parts in parts.items():
        assert set(depth_parts) == {"pix", "distill_output", "distill_features"}
        with (
            torch.no_grad(),
            qsr_plugin.use_depth(model, depth),
            model.body.recording_features() as features,
        ):
            output = model(lr)
        assert sorted(features) == sorted(
            {model.body.group_of[i] for i in model.body.members(depth)}
        )
        expected = (
            0.5
            * torch.stack(
                [F.l1_loss(f, references.features[i]) for i, f in features.items()]
            ).mean()
        )
        assert depth_parts["distill_features"].item() == pytest.approx(expected.item(), rel=1e-5)
        assert depth_parts["distill_output"].item() == pytest.approx(
            F.l1_loss(output, references.output).item(), rel=1e-5
        )
    total.backward()
    assert model.body[5].conv1.weight.grad.abs().sum() > 0


def test_distillation_trains_a_2_bit_model_closer_to_its_teacher(float_model):
    x = set5_sampler(7).sample(4)[0]

    def distance(distill):
        torch.manual_seed(0)
        model = quantized(float_model, bits=2)
        calibrate_from_sampler(model, set5_sampler(), batches=1, batch_size=4)
        teacher = float_model if distill else None
        config = DistillConfig(output=1.0, features=1.0) if distill else None
        train_qat(
            model, set5_sampler(1), steps=15, lr=1e-3, batch_size=4, teacher=teacher, distill=config
        )
        with torch.no_grad():
            return F.l1_loss(model.eval()(x), float_model(x)).item()

    assert distance(True) < distance(False)


def test_bad_distillation_input_is_refused_by_name(float_model):
    with pytest.raises(ValueError, match="output must be a number >= 0, got -1"):
        DistillConfig(output=-1)
    with pytest.raises(ValueError, match="features must be a number >= 0, got 'a lot'"):
        DistillConfig(features="a lot")
    with pytest.raises(ValueError, match="features must be a number >= 0, got nan"):
        DistillConfig(features=float("nan"))
    with pytest.raises(ValueError, match="both 0"):
        DistillConfig(output=0, features=0)
    model = quantized(float_model, depth_variants=[4, 2])
    other = arch("MSRResNet", num_feat=8, num_block=4, upscale=2)
    with pytest.raises(ValueError, match=r"teacher \(MSRResNet\) does not match.*shapes differ"):
        FloatTeacher(other, model)
    with pytest.raises(ValueError, match=r"the teacher lacks body\.3\.conv1\.bias, body\.3\.conv1"):
        FloatTeacher(arch("MSRResNet", num_feat=16, num_block=3, upscale=2), model)
    with pytest.raises(ValueError, match="teacher is a quantized model"):
        FloatTeacher(quantized(float_model), model)
    with pytest.raises(ValueError, match="distill needs teacher"):
        train_qat(model, set5_sampler(), steps=1, distill=DistillConfig())
