"""Real BasicSR networks, quantized and calibrated on real images, for the deployment tests.

Reduced sizes keep the mechanics tests fast; the counting tests build the paper's settings.
LR inputs are bicubic-downscaled patches of Set5 and Set14 (``../shared/data``).
"""

from __future__ import annotations

import functools
import math
import struct

import torch

import qsr_plugin
from qsr_plugin import sr_data
from qsr_plugin._basicsr_compat import import_basicsr

SCALE = 4


def arch(name: str, **options):
    import_basicsr()
    from basicsr.utils.registry import ARCH_REGISTRY

    torch.manual_seed(0)
    return ARCH_REGISTRY.get(name)(**options)


@functools.lru_cache
def _sampler(image_set: str, size: int, seed: int) -> sr_data.PatchSampler:
    images = sr_data.load_hr_images(sr_data.find_image_set(image_set))
    return sr_data.PatchSampler(images, SCALE, size, augment=False, seed=seed)


@functools.lru_cache
def _patches(image_set: str, count: int, size: int, seed: int) -> torch.Tensor:
    return _sampler(image_set, size, seed).sample(count)[0]


def lr_patches(image_set: str = "Set5", count: int = 2, size: int = 16, seed: int = 0):
    """LR patches of ``size`` pixels from a real image set (the same ones on every call)."""
    return _patches(image_set, count, size, seed).clone()


def lr_crops(image_set: str, size: int, count: int) -> torch.Tensor:
    """Top-left ``size`` x ``size`` crops of the LR images (x4) of the first ``count`` images
    of a set that are large enough."""
    pairs = sr_data.make_pairs(sr_data.load_hr_images(sr_data.find_image_set(image_set)), SCALE)
    crops = [sr_data.to_tensor(lr[:size, :size]) for _, lr, _ in pairs if min(lr.shape[:2]) >= size]
    return torch.stack(crops[:count])


def small_msrresnet(bits: int = 4, **settings):
    """MSRResNet with 16 features and 4 blocks grown to variants [8, 4, 2] (QuantSR-C's plan)."""
    model = arch("MSRResNet", num_feat=16, num_block=4, upscale=SCALE)
    return qsr_plugin.quantize(model, bits=bits, depth_variants=[8, 4, 2], **settings)


def small_swinir(bits: int = 4, img_size: int = 16, depth_variants=(4, 2, 1), **settings):
    """SwinIR_S's layout (4 RSTBs, pixelshuffledirect) at embed_dim 12, variants [4, 2, 1]
    unless told otherwise."""
    model = arch(
        "SwinIR",
        upscale=SCALE,
        img_size=img_size,
        window_size=4,
        depths=[2, 2, 2, 2],
        embed_dim=12,
        num_heads=[2, 2, 2, 2],
        mlp_ratio=2,
        upsampler="pixelshuffledirect",
    )
    return qsr_plugin.quantize(
        model,
        bits=bits,
        depth_variants=list(depth_variants),
        example_input=lr_patches(count=1),
        **settings,
    )


def as_trained(model):
    """Calibrate on real LR patches, then move the learned numbers away from their initial
    values (shortcut and residual scales, shifts), as training would, so that every one of
    them matters for the outputs."""
    qsr_plugin.calibrate(model, lr_patches("Set14", count=4))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("shortcut_scale", "residual_scale", "act_quant.shift")):
                noise = torch.randn(parameter.shape, generator=generator)
                parameter.add_(0.1 * noise)
    return model.eval()


def expected_msrresnet_data_bytes(feat, blocks, grown, bits, variants=3):
    """Bytes of the data section of a saved MSRResNet (x4) grown from ``blocks`` to ``grown``
    blocks, from the architecture definition: float numbers at 4 bytes, quantized weights
    at ``bits`` bits packed per layer, the quantizer tables, one byte per signedness flag."""

    def conv3(cin, cout):
        return cin * cout * 9

    float_numbers = (
        conv3(3, feat)
        + feat  # conv_first
        + 2 * (conv3(feat, 4 * feat) + 4 * feat)  # upconv1, upconv2
        + conv3(feat, feat)
        + feat  # conv_hr
        + conv3(feat, 3)
        + 3  # conv_last
        + grown * 2 * feat  # body conv biases
        + grown  # shortcut scales
        + variants * grown  # residual scales, one per variant and block
    )
    layers = 2 * grown
    codes = layers * math.ceil(conv3(feat, feat) * bits / 8)
    tables = 4 * (layers + layers + layers * feat) + layers  # steps, shifts (f32), signed
    membership = variants * grown  # the depth plan, one byte per variant and block
    return 4 * float_numbers + codes + tables + membership


def data_section_size(path):
    raw = path.read_bytes()
    (header,) = struct.unpack("<Q", raw[:8])
    return len(raw) - 8 - header, 8 + header
