"""timm glue: quantized model factory, preprocessing of real photos, distillation."""

import pytest
import torch

import qsr_plugin
from qsr_plugin.integrations.timm import (
    agreement,
    create_quantized_model,
    distill,
    image_batches,
)
from qsr_plugin.sr_data import builtin_images

SMALL_INPUT = {"pretrained_cfg_overlay": {"input_size": (3, 64, 64)}}


def photos():
    return list(builtin_images()["train"].values())[:4]


def test_create_quantized_model_applies_the_quantsr_section():
    model = create_quantized_model(
        "resnet18", {"bits": 2, "depth_variants": [2, 1]}, zero_init_last=False, **SMALL_INPUT
    )
    assert qsr_plugin.depth_variants(model) == [2, 1]
    assert isinstance(model.layer1[0].conv1, qsr_plugin.QuantConv2d)
    assert model.layer1[0].conv1.spec.weight_bits == 2


def test_bad_settings_and_names_are_refused_before_building():
    with pytest.raises(
        ValueError, match=r"unknown key\(s\) quantsr\.bitz \(did you mean quantsr\.bits\?\)"
    ):
        create_quantized_model("resnet18", {"bitz": 4})
    with pytest.raises(ValueError, match="'resnet_18' is not a timm model"):
        create_quantized_model("resnet_18")


def test_image_batches_follow_the_model_preprocessing():
    model = create_quantized_model("resnet18", **SMALL_INPUT)
    batches = image_batches(model, photos(), batch_size=3)
    assert [tuple(b.shape) for b in batches] == [(3, 3, 64, 64), (1, 3, 64, 64)]
    assert batches[0].mean().abs() < 1.5  # normalised with ImageNet mean/std


@pytest.mark.slow
def test_distillation_brings_the_2_bit_student_closer_to_its_float_teacher():
    import timm

    torch.manual_seed(0)
    teacher = timm.create_model("resnet18", zero_init_last=False, **SMALL_INPUT).eval()
    student = qsr_plugin.quantize(
        timm.create_model("resnet18", zero_init_last=False, **SMALL_INPUT),
        bits=2,
        depth_variants=[2, 1],
    )
    student.load_state_dict(teacher.state_dict(), strict=False)
    batches = image_batches(teacher, photos(), batch_size=4)
    qsr_plugin.calibrate(student, batches)
    before = agreement(student, teacher, batches)
    losses = distill(student, teacher, batches, steps=8, lr=1e-4)
    after = agreement(student, teacher, batches)
    assert losses[-1] < losses[0]
    for depth in (2, 1):
        assert after[depth]["kl"] < before[depth]["kl"], (before, after)
