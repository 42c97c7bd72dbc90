"""Which frozen convolutions can write the next layer's codes themselves (integer export).

A convolution whose output goes only to the next quantized layer's input quantizer, directly
or through a ReLU, can run as one ``QLinearConv`` that rounds straight onto that quantizer's
grid: the model rounds there anyway, so the fused kernel changes nothing but the float
rounding. The graph comes from ``torch.fx`` with the frozen layers as leaves; a model that
fx cannot trace gets no fusion (every convolution then runs as ``ConvInteger``).

Through a ReLU the fusion needs an unsigned consumer (its codes are all >= 0, so the ReLU
passes the fused codes unchanged); its shift is handled by the consumer (see
``FrozenActivationQuantizer.codes``).
"""

from __future__ import annotations

import copy
from collections import Counter

import torch
from torch import fx, nn
from torch.nn import functional as F

from .frozen_layers import FrozenQuantConv2d, is_frozen_layer

RELU_FUNCTIONS = {F.relu, torch.relu}


class _FrozenLeafTracer(fx.Tracer):
    def is_leaf_module(self, module: nn.Module, name: str) -> bool:
        return is_frozen_layer(module) or super().is_leaf_module(module, name)


def _is_relu(graph_module: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(graph_module.get_submodule(node.target), nn.ReLU)
    return node.op == "call_function" and node.target in RELU_FUNCTIONS


def _only_user(node: fx.Node) -> fx.Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


def _consumer(graph_module, node) -> tuple[str, str] | None:
    """The frozen layer whose input quantizer ``node``'s output alone reaches, and how
    ("direct" or "relu")."""
    source, route = node, "direct"
    user = _only_user(node)
    if user is not None and _is_relu(graph_module, user):
        source, route = user, "relu"
        user = _only_user(user)
    if user is None or user.op != "call_module" or user.args != (source,) or user.kwargs:
        return None
    layer = graph_module.get_submodule(user.target)
    if not is_frozen_layer(layer) or layer.input_quant is None:
        return None
    quantizer = layer.input_quant
    if route == "relu" and quantizer.signed:
        return None
    producer = graph_module.get_submodule(node.target)
    if quantizer.shift is not None and quantizer.shift.numel() != producer.out_channels:
        return None
    return user.target, route


def fused_convolutions(model: nn.Module) -> dict[str, tuple[str, str]]:
    """For each frozen Conv2d (by qualified name) that can write its consumer's codes: the
    consumer layer's name and the route ("direct" or "relu")."""
    model = copy.deepcopy(model)  # a failed trace can leave proxies in a model's caches
    try:
        graph_module = fx.GraphModule(model, _FrozenLeafTracer().trace(model))
    except Exception:  # noqa: BLE001  (any untraceable model: no fusion, still exact)
        return {}
    calls = Counter(n.target for n in graph_module.graph.nodes if n.op == "call_module")
    plan = {}
    for node in graph_module.graph.nodes:
        if node.op != "call_module" or calls[node.target] > 1:
            continue
        layer = graph_module.get_submodule(node.target)
        if not isinstance(layer, FrozenQuantConv2d) or layer.input_quant is None:
            continue
        consumer = _consumer(graph_module, node)
        if consumer is not None and calls[consumer[0]] == 1:  # a layer run twice: not fused
            plan[node.target] = consumer
    return plan
