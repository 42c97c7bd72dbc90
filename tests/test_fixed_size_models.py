"""quantize() and report() find the input size a fixed-size model declares."""

import pytest
import timm
import torch
from _deploy_models import arch

import qsr_plugin
from qsr_plugin.rewrite.quantize import default_example_input

pytestmark = pytest.mark.usefixtures("eager_kernels")


def timm_model(name, **settings):
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=10, **settings)


@pytest.mark.slow
def test_report_counts_deit_tiny_at_the_224_pixels_it_accepts():
    model = qsr_plugin.quantize(timm_model("deit_tiny_patch16_224"), bits=4)
    result = qsr_plugin.report(model, saved_file=False)
    assert result.input_size == (3, 224, 224)
    assert result.rows[0].ops > 0


def test_report_at_a_size_deit_refuses_says_to_pass_input_size():
    model = qsr_plugin.quantize(timm_model("deit_tiny_patch16_224"), bits=4)
    with pytest.raises(
        ValueError, match=r"report\(\): .* 3x256x256 .* pass input_size=\(C, H, W\)"
    ):
        qsr_plugin.report(model, input_size=(3, 256, 256), saved_file=False)


def test_quantize_probes_a_vit_built_with_img_size_32_at_32_pixels(real_batch):
    model = timm_model("vit_tiny_patch16_224", img_size=32)
    assert default_example_input(model).shape == (1, 3, 32, 32)
    qsr_plugin.quantize(model, bits=4)
    assert qsr_plugin.quantization_record(model).body.path == "blocks"
    assert model(real_batch((1, 3, 32, 32))).shape == (1, 10)


def test_basicsr_swinir_is_probed_at_its_img_size():
    model = arch(
        "SwinIR",
        upscale=2,
        img_size=24,
        window_size=4,
        depths=[2, 2],
        embed_dim=12,
        num_heads=[2, 2],
        mlp_ratio=2,
        upsampler="pixelshuffledirect",
    )
    assert default_example_input(model).shape == (1, 3, 24, 24)
