"""The input size a model declares: what ``quantize()`` probes with and ``report()`` counts.

timm's vision transformers and BasicSR's SwinIR keep theirs in ``patch_embed.img_size``
(timm's patch embedding refuses any other size when ``strict_img_size`` is set); other timm
models give one in ``pretrained_cfg["input_size"]``. The channels come from the first
Conv2d (the patch projection, or SwinIR's ``conv_first``).
"""

from __future__ import annotations

from torch import nn

from ..layers import COMPUTE_TYPES


def _channels(model: nn.Module) -> int | None:
    first = next((m for m in model.modules() if isinstance(m, COMPUTE_TYPES)), None)
    return first.in_channels if isinstance(first, nn.Conv2d) else None


def _patch_embed_size(model: nn.Module) -> tuple[int, int] | None:
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if isinstance(size, tuple | list) and len(size) == 2 and all(isinstance(s, int) for s in size):
        return tuple(size)
    return None


def declared_input_size(model: nn.Module) -> tuple[int, ...] | None:
    """One input's shape (no batch dimension) that the model declares, or None."""
    size, channels = _patch_embed_size(model), _channels(model)
    if size is not None and channels is not None:
        return (channels, *size)
    config = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    if isinstance(config, dict) and "input_size" in config:
        return tuple(config["input_size"])
    return None


def fixed_input_size(model: nn.Module) -> tuple[int, ...] | None:
    """The only input size the model accepts (timm's ``strict_img_size``), or None."""
    if getattr(getattr(model, "patch_embed", None), "strict_img_size", False):
        return declared_input_size(model)
    return None
