"""Where data flows between a model's modules: torch.fx first, forward hooks as fallback.

The rewriter needs, for each module, the value it consumes, the value it produces and
their shapes, plus the order in which Conv2d/Linear layers run. ``analyze`` gets them by
symbolic tracing with ``torch.fx`` (shapes from running the traced graph on an example
input). A module whose forward cannot be traced (control flow on shapes, as in SwinIR's
``SwinTransformerBlock``) has its class made a leaf and the trace is retried, so it is seen
as one call; timm's registry of modules and functions not to trace is honoured. Only when
the model's own ``forward`` cannot be traced are module calls recorded with forward hooks
instead. Neither way changes the model: attributes assigned during tracing are restored,
and the probe runs in eval mode without gradients.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from ..layers import COMPUTE_TYPES, is_quantized_layer
from ..quantizers import Quantizer
from ._module_state import preserved_module_state

MAX_TRACE_ATTEMPTS = 32


@dataclass
class ModuleCall:
    """One module's single call: its main input and its output, as value ids and shapes.

    ``output`` is None when the module was called more than once or produced several
    values used outside it; such a module cannot be a link of a chain.
    """

    inputs: list[tuple[str, tuple[int, ...] | None]]
    output: str | None
    output_shape: tuple[int, ...] | None


@dataclass
class ModelAnalysis:
    """What ``analyze`` found out about a model."""

    method: str
    calls: dict[str, ModuleCall]
    compute_order: list[str]
    leaf_classes: list[str] = field(default_factory=list)
    fx_error: str | None = None


def _timm_notrace() -> tuple[tuple[type, ...], tuple]:
    try:
        from timm.layers import get_notrace_functions, get_notrace_modules
    except ImportError:  # timm is a dependency, but keep analysis usable without it
        return (), ()
    return tuple(get_notrace_modules()), tuple(get_notrace_functions())


class _LeafTracer(fx.Tracer):
    """A tracer with extra leaf classes that remembers which module a failure came from."""

    def __init__(self, leaf_types: tuple[type, ...], autowrap: tuple) -> None:
        super().__init__(autowrap_functions=autowrap)
        self.leaf_types = leaf_types
        self.path_stack: list[str] = []
        self.failed_in: str | None = None

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, self.leaf_types) or super().is_leaf_module(module, qualified_name)

    def call_module(self, module, forward, args, kwargs):
        self.path_stack.append(self.path_of_module(module))
        try:
            return super().call_module(module, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = self.path_stack[-1]
            raise
        finally:
            self.path_stack.pop()


def _shape(value) -> tuple[int, ...] | None:
    meta = getattr(value, "meta", {}).get("tensor_meta")
    return tuple(meta.shape) if hasattr(meta, "shape") else None


def _calls_from_graph(graph: fx.Graph) -> dict[str, ModuleCall]:
    members: dict[str, list[fx.Node]] = {}
    for node in graph.nodes:
        for path in node.meta.get("nn_module_stack", {}):
            members.setdefault(path, []).append(node)
    calls = {}
    for path, nodes in members.items():
        inside = set(nodes)
        inputs: list[fx.Node] = []
        for node in nodes:
            for arg in node.all_input_nodes:
                if arg not in inside and arg not in inputs:
                    inputs.append(arg)
        outputs = [n for n in nodes if any(user not in inside for user in n.users)]
        output = outputs[0] if len(outputs) == 1 else None
        calls[path] = ModuleCall(
            inputs=[(n.name, _shape(n)) for n in inputs],
            output=output.name if output is not None else None,
            output_shape=_shape(output) if output is not None else None,
        )
    return calls


def _trace_with_fx(model: nn.Module, example_input: torch.Tensor):
    notrace_modules, notrace_functions = _timm_notrace()
    leaf_types = (*notrace_modules, Quantizer)
    leaf_classes: list[str] = []
    for _ in range(MAX_TRACE_ATTEMPTS):
        tracer = _LeafTracer(leaf_types, notrace_functions)
        try:
            before = set(model.__dict__)
            with preserved_module_state(model):
                graph = tracer.trace(model)
                constants = {k: v for k, v in model.__dict__.items() if k not in before}
            return _graph_module(model, graph, constants), leaf_classes, None
        except Exception as error:
            culprit = tracer.failed_in
            if not culprit:  # the model's own forward cannot be traced
                return None, leaf_classes, f"{type(error).__name__}: {error}"
            culprit_type = type(model.get_submodule(culprit))
            if culprit_type in leaf_types:
                return None, leaf_classes, f"{type(error).__name__}: {error}"
            leaf_types = (*leaf_types, culprit_type)
            leaf_classes.append(culprit_type.__name__)
    return None, leaf_classes, "too many untraceable module classes"


def _graph_module(model: nn.Module, graph: fx.Graph, constants: dict) -> fx.GraphModule:
    """The traced graph over the model as it was before tracing, plus the trace's constants.

    Attributes the forward assigned while tracing (SwinIR's ``self.mean``) hold proxies
    then; building the GraphModule from the restored model avoids copying those.
    """
    targets = {
        node.target
        for node in graph.nodes
        if node.op in ("call_module", "get_attr") and node.target not in constants
    }
    root = dict(constants)
    for target in targets:
        owner_path, _, name = target.rpartition(".")
        root[target] = getattr(model.get_submodule(owner_path), name)
    return fx.GraphModule(root, graph, class_name=type(model).__name__)


def _record_compute_order(model: nn.Module, run) -> list[str]:
    order: list[str] = []
    handles = [
        module.register_forward_hook(lambda m, i, o, name=name: order.append(name))
        for name, module in model.named_modules()
        if isinstance(module, COMPUTE_TYPES)
    ]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return list(dict.fromkeys(order))


def _calls_from_hooks(model: nn.Module, example_input: torch.Tensor):
    """Module calls recorded with hooks: value ids are the ids of live tensors."""
    seen: dict[str, list[tuple[list, object]]] = {}
    keep_alive: list[object] = []

    def pre_hook(name):
        def hook(module, args):
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            keep_alive.extend(tensors)
            seen.setdefault(name, []).append(
                ([(str(id(t)), tuple(t.shape)) for t in tensors], None)
            )

        return hook

    def post_hook(name):
        def hook(module, args, output):
            keep_alive.append(output)
            inputs, _ = seen[name][-1]
            seen[name][-1] = (inputs, output)

        return hook

    handles = []
    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_pre_hook(pre_hook(name)))
            handles.append(module.register_forward_hook(post_hook(name)))
    try:
        with preserved_module_state(model):
            compute_order = _record_compute_order(model, lambda: model(example_input))
    finally:
        for handle in handles:
            handle.remove()
    calls = {}
    for name, records in seen.items():
        inputs, output = records[0]
        single = len(records) == 1 and isinstance(output, torch.Tensor)
        calls[name] = ModuleCall(
            inputs=inputs,
            output=str(id(output)) if single else None,
            output_shape=tuple(output.shape) if single else None,
        )
    return calls, compute_order


def analyze(model: nn.Module, example_input: torch.Tensor) -> ModelAnalysis:
    """Trace ``model`` on ``example_input`` and return its module-level data flow.

    The model is left exactly as it was (attributes, training mode, parameters).
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            graph_module, leaf_classes, error = _trace_with_fx(model, example_input)
            if graph_module is not None:
                with preserved_module_state(model):
                    compute_order = _record_compute_order(
                        model, lambda: ShapeProp(graph_module).propagate(example_input)
                    )
                calls = _calls_from_graph(graph_module.graph)
                return ModelAnalysis("fx", calls, compute_order, leaf_classes)
            calls, compute_order = _calls_from_hooks(model, example_input)
            return ModelAnalysis("hooks", calls, compute_order, leaf_classes, fx_error=error)
    finally:
        model.train(was_training)


def existing_quantized_layers(model: nn.Module) -> list[str]:
    """Paths of layers that are already quantized."""
    return [name for name, m in model.named_modules() if is_quantized_layer(m)]
