"""quantize() checks that the layers it quantizes run in training and eval mode; summary()
lists the convolutions and linear maps a model computes itself (F.conv2d/F.linear)."""

import pytest
import timm
import torch
from _deploy_models import arch
from torch import nn

import qsr_plugin
from qsr_plugin.rewrite.coverage import observe


def ecbsr():
    return arch(
        "ECBSR",
        num_in_ch=3,
        num_out_ch=3,
        num_block=4,
        num_channel=16,
        with_idt=False,
        act_type="prelu",
        scale=2,
    )


def small_beit():
    torch.manual_seed(0)
    return timm.create_model(
        "beit_base_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        embed_dim=32,
        depth=2,
        num_heads=2,
        num_classes=10,
    )


def test_ecbsr_whose_eval_forward_bypasses_its_convs_is_refused_and_left_float(real_batch):
    model = ecbsr()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(
        ValueError,
        match=r"backbone\.0\.conv3x3, .* do not run in eval mode .* backbone\.0, .* call "
        r"F\.conv2d/F\.linear themselves instead",
    ):
        qsr_plugin.quantize(model, bits=4, example_input=real_batch((1, 3, 16, 16)))
    assert qsr_plugin.quantization_record(model) is None
    assert not any(isinstance(m, qsr_plugin.QuantConv2d) for m in model.modules())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_beit_qkv_layers_that_never_run_stay_float_and_summary_says_why(real_batch):
    # BEiT's attention computes F.linear(x, self.qkv.weight, ...) instead of calling qkv.
    with pytest.warns(
        UserWarning, match=r"blocks\.0\.attn\.qkv: did not run on the probe input, in training "
    ):
        model = qsr_plugin.quantize(small_beit(), bits=4, example_input=real_batch((1, 3, 32, 32)))
    assert type(model.blocks[0].attn.qkv) is nn.Linear
    assert isinstance(model.blocks[0].attn.proj, qsr_plugin.QuantLinear)
    text = qsr_plugin.summary(model)
    assert "computed outside Conv2d/Linear layers, so kept in float" in text
    assert "blocks.1.attn: F.linear on blocks.1.attn.qkv.weight (train and eval mode)" in text
    assert "float (did not run on the probe input, in training or eval mode" in text
    assert "float (outside the body 'blocks', scope='body')" in text


def test_the_train_mode_probe_leaves_batch_norm_statistics_alone(real_batch):
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    qsr_plugin.quantize(model, bits=4, example_input=real_batch((1, 3, 64, 64)))
    for key, value in before.items():
        assert torch.equal(model.state_dict()[key], value), key


def test_the_probe_leaves_the_random_number_generator_alone(real_batch):
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, drop_rate=0.5)
    expected = torch.manual_seed(7) and torch.rand(1)
    torch.manual_seed(7)
    ran = observe(model, real_batch((1, 3, 32, 32))).ran
    assert torch.equal(torch.rand(1), expected)
    assert "blocks.0.attn.qkv" in ran["train"] and "blocks.0.attn.qkv" in ran["eval"]
