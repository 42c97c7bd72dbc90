"""A JSON description of how a model was quantized, and the differences between two of them.

Saved files carry this description, so :func:`qsr_plugin.load` can check that the target model
was built and quantized the same way and name the first field that differs.
"""

from __future__ import annotations

import json
from typing import Any

from torch import nn

from ..rewrite.depth import depth_switchable_bodies
from ..rewrite.quantize import quantization_record
from .quantized_layers import quantized_layers


def describe(model: nn.Module) -> dict[str, Any]:
    """The quantization of ``model`` (a quantized model) as JSON-compatible data.

    Keys: ``model_class``, ``config`` (``QuantizeConfig.to_dict()``), ``body`` (path, block
    type and depth found by quantize), ``depth_bodies`` (per DQA container: its depths,
    execution order and original depth; which blocks each depth runs is state, in the
    container's ``membership`` buffer) and ``layers`` (per quantized layer: type,
    method, bits, per-channel, weight shape and dtype).
    """
    record = quantization_record(model)
    body = record.body
    description = {
        "model_class": type(model).__name__,
        "config": record.config.to_dict(),
        "body": None
        if body is None
        else {"path": body.path, "block_type": body.block_type, "depth": body.depth},
        "depth_bodies": {
            path: {
                "depths": container.depth_variants,
                "execution_order": list(container.execution_order),
                "original_depth": container.original_depth,
            }
            for path, container in depth_switchable_bodies(model)
        },
        "layers": {
            name: {
                "type": type(layer).__name__,
                "method": layer.spec.method,
                "weight_bits": layer.spec.weight_bits,
                "act_bits": layer.spec.act_bits,
                "per_channel": layer.spec.per_channel,
                "weight_shape": list(layer.weight.shape),
                "dtype": str(layer.weight.dtype).removeprefix("torch."),
            }
            for name, layer in quantized_layers(model)
        },
    }
    return json.loads(json.dumps(description))  # the form it takes after a JSON round trip


def differences(saved: Any, current: Any, where: str = "") -> list[str]:
    """Every field where ``saved`` and ``current`` differ, as ``"field: file X, model Y"``.

    Example:
        >>> differences({"config": {"bits": 2}}, {"config": {"bits": 4}})
        ['config.bits: file has 2, model has 4']
    """
    if isinstance(saved, dict) and isinstance(current, dict):
        found = []
        for key in sorted(set(saved) | set(current), key=str):
            field = f"{where}.{key}" if where else str(key)
            if key not in current:
                found.append(f"{field}: in the file, not in the model")
            elif key not in saved:
                found.append(f"{field}: in the model, not in the file")
            else:
                found.extend(differences(saved[key], current[key], field))
        return found
    if saved != current:
        return [f"{where}: file has {json.dumps(saved)}, model has {json.dumps(current)}"]
    return []
