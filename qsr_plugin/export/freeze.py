"""``freeze()``: an inference model for one depth of a quantized model."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..config import QuantizeConfig
from ..layers import layer_types
from ..rewrite.depth import depth_switchable_bodies
from ..rewrite.quantize import RECORD_ATTRIBUTE, quantization_record
from .frozen_body import frozen_body
from .quantized_layers import (
    activation_grid,
    quantized_layers,
    require_deployable,
    require_quantized,
    weight_codes,
)

FROZEN_ATTRIBUTE = "_qsr_frozen"


@dataclass(frozen=True)
class FrozenRecord:
    """What :func:`freeze` made a model from, kept on the frozen model.

    Attributes:
        config: the quantization config of the model it was frozen from.
        depth: the depth variant it runs, or None for a model without depth variants.
    """

    config: QuantizeConfig
    depth: int | None


def frozen_record(model: nn.Module) -> FrozenRecord | None:
    """The record :func:`freeze` left on a frozen model, or None for any other model."""
    return model.__dict__.get(FROZEN_ATTRIBUTE)


def _replace(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    model.get_submodule(parent_path)._modules[name] = new


def _chosen_depth(model: nn.Module, depth: int | None) -> int | None:
    bodies = depth_switchable_bodies(model)
    if not bodies:
        if depth is not None:
            raise ValueError(
                f"freeze(): depth={depth!r} was given but {type(model).__name__} has no depth "
                "variants; omit depth"
            )
        return None
    container = bodies[0][1]
    if depth is None:
        return container.active_depth
    if depth not in container.depth_variants:
        raise ValueError(
            f"freeze(): depth={depth!r} is not a depth variant of {type(model).__name__}; "
            f"choose one of {container.depth_variants}"
        )
    return depth


def freeze(model: nn.Module, depth: int | None = None) -> nn.Module:
    """An inference-only copy of a quantized model that runs one depth variant.

    The copy keeps only the blocks that ``depth`` runs (in execution order, with their
    shortcut and residual scales applied), quantizes every weight once (stored as the
    dequantized float weight, with the integer codes and step beside it), and keeps
    activation quantization. In eval mode it computes exactly what ``model`` computes at
    that depth, without re-quantizing weights on every call. It refuses to run in training
    mode; ``model`` itself is not changed.

    Args:
        model: a model quantized with a learned-step method and calibrated or trained.
        depth: one of the model's depth variants; None for its active depth (and for a
            model without depth variants).

    Returns:
        The frozen model, in eval mode, with no trainable parameters.

    Raises:
        ValueError: the model was never quantized, a layer uses a method other than
            ``quantsr``/``lsq``, or ``depth`` is not a depth variant.
        RuntimeError: a quantizer was never initialised (the message names it).

    Example:
        ``fast = qsr_plugin.freeze(model, depth=16); sr = fast(lr)``
    """
    model = require_quantized(model, "freeze()")
    require_deployable(model, "freeze()")
    depth = _chosen_depth(model, depth)
    config = quantization_record(model).config
    frozen = copy.deepcopy(model)
    del frozen.__dict__[RECORD_ATTRIBUTE]
    with torch.no_grad():
        for path, container in depth_switchable_bodies(frozen):
            _replace(frozen, path, frozen_body(container, depth))
        for name, layer in quantized_layers(frozen):
            codes = None if layer.weight_quant is None else weight_codes(layer)
            grid = None if layer.act_quant is None else activation_grid(layer.act_quant)
            _replace(frozen, name, layer_types(layer).frozen.freeze(layer, codes, grid))
    frozen.eval().requires_grad_(False)
    frozen.__dict__[FROZEN_ATTRIBUTE] = FrozenRecord(config, depth)
    return frozen
