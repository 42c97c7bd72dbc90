"""Real BasicSR and timm architectures at test sizes, with what the rewriter should find."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import timm
import torch
from torch import nn

from qsr_plugin._basicsr_compat import import_basicsr


@dataclass(frozen=True)
class Arch:
    """A model builder with its input size and the body quantize() should detect."""

    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    body: str | None
    body_depth: int = 0
    is_sr: bool = True


def _basicsr(type_name: str, **kwargs) -> Callable[[], nn.Module]:
    def build():
        import_basicsr()
        from basicsr.utils.registry import ARCH_REGISTRY

        torch.manual_seed(0)
        return ARCH_REGISTRY.get(type_name)(**kwargs)

    return build


def _timm(name: str, **kwargs) -> Callable[[], nn.Module]:
    def build():
        torch.manual_seed(0)
        # No stochastic depth: a dropped residual branch would get no gradient by chance.
        return timm.create_model(name, pretrained=False, drop_path_rate=0.0, **kwargs)

    return build


# SwinIR_S at the paper's size (embed_dim 60, 4 x 6 blocks), as the recipes and the benchmarks
# build it (tests/test_benchmarks.py checks that benchmarks.models agrees).
SWINIR_S = dict(
    upscale=4,
    in_chans=3,
    img_size=64,
    window_size=8,
    img_range=1.0,
    depths=[6, 6, 6, 6],
    embed_dim=60,
    num_heads=[6, 6, 6, 6],
    mlp_ratio=2,
    upsampler="pixelshuffledirect",
)

ARCHS = [
    Arch(
        "MSRResNet",
        _basicsr("MSRResNet", num_in_ch=3, num_out_ch=3, num_feat=16, num_block=4, upscale=2),
        (1, 3, 16, 16),
        "body",
        4,
    ),
    Arch(
        "EDSR",
        _basicsr("EDSR", num_in_ch=3, num_out_ch=3, num_feat=16, num_block=4, upscale=2),
        (1, 3, 16, 16),
        "body",
        4,
    ),
    Arch(
        "RCAN",
        _basicsr(
            "RCAN",
            num_in_ch=3,
            num_out_ch=3,
            num_feat=16,
            num_group=3,
            num_block=2,
            squeeze_factor=4,
            upscale=2,
        ),
        (1, 3, 16, 16),
        "body",
        3,
    ),
    Arch(
        "RRDBNet",
        _basicsr("RRDBNet", num_in_ch=3, num_out_ch=3, num_feat=16, num_block=3, num_grow_ch=8),
        (1, 3, 16, 16),
        "body",
        3,
    ),
    Arch(
        "SwinIR-classical",
        _basicsr(
            "SwinIR",
            upscale=2,
            img_size=16,
            window_size=4,
            img_range=1.0,
            depths=[2, 2, 2],
            embed_dim=24,
            num_heads=[2, 2, 2],
            mlp_ratio=2,
            upsampler="pixelshuffle",
            resi_connection="1conv",
        ),
        (1, 3, 16, 16),
        "layers",
        3,
    ),
    Arch("SwinIR_S", _basicsr("SwinIR", **SWINIR_S), (1, 3, 16, 16), "layers", 4),
    Arch(
        "SRVGGNetCompact",
        _basicsr(
            "SRVGGNetCompact_basicsr", num_in_ch=3, num_out_ch=3, num_feat=16, num_conv=4, upscale=2
        ),
        (1, 3, 16, 16),
        None,
    ),
    # zero_init_last=False: timm otherwise zeroes each block's last BN, making blocks identities
    Arch(
        "timm-resnet18",
        _timm("resnet18", zero_init_last=False),
        (1, 3, 64, 64),
        "layer1",
        2,
        is_sr=False,
    ),
    Arch(
        "timm-vit_tiny",
        _timm("vit_tiny_patch16_224"),
        (1, 3, 224, 224),
        "blocks",
        12,
        is_sr=False,
    ),
    Arch(
        "timm-swin_tiny",
        _timm("swin_tiny_patch4_window7_224"),
        (1, 3, 224, 224),
        "layers.2.blocks",
        6,
        is_sr=False,
    ),
]

ARCHS_WITH_BODY = [a for a in ARCHS if a.body is not None]


def arch_params(archs: list[Arch], slow: set[str] = frozenset()) -> list:
    """``archs`` as ``pytest.param`` cases named after them; those named in ``slow`` are
    marked ``slow`` (over 5 s here)."""
    return [
        pytest.param(a, id=a.name, marks=pytest.mark.slow if a.name in slow else ()) for a in archs
    ]


def arch_by_name(name: str) -> Arch:
    """The test architecture called ``name``."""
    return next(a for a in ARCHS if a.name == name)
