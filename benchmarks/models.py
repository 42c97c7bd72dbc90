"""The backbones the benchmarks measure, at the sizes they are measured on."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from qsr_plugin import sr_data
from qsr_plugin._basicsr_compat import import_basicsr


@dataclass(frozen=True)
class Backbone:
    """A BasicSR architecture with its settings, training batch shape and depth variants.

    Attributes:
        name: label in tables.
        arch: BasicSR ``ARCH_REGISTRY`` name.
        settings: keyword arguments of the architecture.
        scale: the upscaling factor.
        batch: training batch size.
        patch: LR patch side.
        depth: number of body blocks of the float model.
        depth_variants: QuantSR's DQA depths for this backbone (deepest first).
    """

    name: str
    arch: str
    settings: dict
    scale: int
    batch: int
    patch: int
    depth: int
    depth_variants: tuple[int, ...]

    def build(self, seed: int = 0) -> nn.Module:
        """A freshly initialised float model (same weights for the same seed)."""
        import_basicsr()
        from basicsr.utils.registry import ARCH_REGISTRY

        torch.manual_seed(seed)
        return ARCH_REGISTRY.get(self.arch)(**self.settings)

    def batch_shapes(self, batch: int | None = None) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Shapes of an (LR, HR) training batch."""
        n = batch or self.batch
        hr = self.patch * self.scale
        return (n, 3, self.patch, self.patch), (n, 3, hr, hr)

    def example_input(self) -> torch.Tensor:
        """A one-image probe input for ``quantize(example_input=...)``."""
        return torch.rand(1, 3, self.patch, self.patch)


MSRRESNET = Backbone(
    name="MSRResNet 64x16 x4",
    arch="MSRResNet",
    settings=dict(num_in_ch=3, num_out_ch=3, num_feat=64, num_block=16, upscale=4),
    scale=4,
    batch=4,
    patch=48,
    depth=16,
    depth_variants=(32, 16, 8),
)

SWINIR_S = Backbone(
    name="SwinIR_S x4",
    arch="SwinIR",
    settings=dict(
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
    ),
    scale=4,
    batch=2,
    patch=64,
    depth=4,
    depth_variants=(4, 2, 1),
)

SPEED_BACKBONES = {"msrresnet": MSRRESNET, "swinir_s": SWINIR_S}


def set14_lr_crops(size: int, scale: int = 4, image_set: str = "Set14") -> list[torch.Tensor]:
    """Top-left ``size`` x ``size`` crops of the LR images of ``image_set`` (Set14 unless told;
    MATLAB bicubic, x``scale``) that are at least that large, as (3, size, size) tensors."""
    pairs = sr_data.make_pairs(sr_data.load_hr_images(sr_data.find_image_set(image_set)), scale)
    return [sr_data.to_tensor(lr[:size, :size]) for _, lr, _ in pairs if min(lr.shape[:2]) >= size]


def small_msrresnet(num_feat: int, num_block: int, scale: int, patch: int, batch: int):
    """A small MSRResNet for the accuracy benchmark and the tests."""
    return Backbone(
        name=f"MSRResNet {num_feat}x{num_block} x{scale}",
        arch="MSRResNet",
        settings=dict(
            num_in_ch=3, num_out_ch=3, num_feat=num_feat, num_block=num_block, upscale=scale
        ),
        scale=scale,
        batch=batch,
        patch=patch,
        depth=num_block,
        depth_variants=(2 * num_block, num_block, max(1, num_block // 2)),
    )


def training_step(
    model: nn.Module,
    lr: torch.Tensor,
    hr: torch.Tensor,
    loss: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> Callable[[], None]:
    """One Adam step (forward, L1 loss, backward, update) on a fixed batch, as a callable.

    ``loss(model, lr, hr)`` replaces the plain L1 loss (e.g. the joint loss of all depth
    variants). Adam runs with ``foreach=True`` so that the per-parameter overhead of the
    quantizers' small step and shift tensors is batched as in a GPU run.
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-7, foreach=True)
    model.train()

    def compute_loss():
        if loss is not None:
            return loss(model, lr, hr)
        return nn.functional.l1_loss(model(lr), hr)

    def step():
        optimizer.zero_grad(set_to_none=True)
        compute_loss().backward()
        optimizer.step()

    return step
