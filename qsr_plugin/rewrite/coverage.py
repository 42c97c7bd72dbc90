"""Which Conv2d/Linear layers a model runs, in training and eval mode, and which convolutions
and linear maps it computes itself with ``F.conv2d``/``F.linear``.

``quantize()`` replaces layers by quantized ones; a forward that bypasses a layer in one mode
(ECBSR's ``ECB`` re-parameterises its branches into one ``F.conv2d`` in eval mode) would leave
the model float there, so ``quantize()`` refuses it; a layer that runs in neither mode stays
float, and ``summary()`` lists the functional calls, which stay float too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as module_hooks
from torch.overrides import TorchFunctionMode

from ..layers import COMPUTE_TYPES
from ._module_state import preserved_module_state

MODES = ("train", "eval")
FUNCTIONAL = {F.conv2d: "F.conv2d", F.linear: "F.linear"}


@dataclass
class Coverage:
    """What ran on the probe input.

    Attributes:
        ran: per mode, the qualified names of the Conv2d/Linear layers that ran.
        functional: ``{caller path: description}`` of ``F.conv2d``/``F.linear`` calls made
            outside a Conv2d/Linear layer (the model's class name for its own forward).
    """

    ran: dict[str, set[str]] = field(default_factory=dict)
    functional: dict[str, str] = field(default_factory=dict)


class _FunctionalCalls(TorchFunctionMode):
    """Records F.conv2d/F.linear calls with the module that made them."""

    def __init__(self, stack: list[nn.Module], names: dict[int, str], parameters: dict[int, str]):
        super().__init__()
        self.stack, self.names, self.parameters = stack, names, parameters
        self.calls: dict[str, set[str]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        caller = self.stack[-1] if self.stack else None
        if func in FUNCTIONAL and not isinstance(caller, COMPUTE_TYPES):
            weight = kwargs.get("weight", args[1] if len(args) > 1 else None)
            on = self.parameters.get(id(weight), "a weight computed in forward")
            path = self.names.get(id(caller), "") if caller is not None else ""
            self.calls.setdefault(path, set()).add(f"{FUNCTIONAL[func]} on {on}")
        return func(*args, **kwargs)


@contextlib.contextmanager
def _module_stack() -> Iterator[list[nn.Module]]:
    stack: list[nn.Module] = []

    def leave(module, args, output) -> None:  # a hook that returns a value replaces the output
        stack.pop()

    handles = [
        module_hooks.register_module_forward_pre_hook(lambda m, a: stack.append(m)),
        module_hooks.register_module_forward_hook(leave),
    ]
    try:
        yield stack
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def _untouched(model: nn.Module) -> Iterator[None]:
    """Undo a probe: attributes, tensor contents (batch-norm statistics) and the RNG."""
    tensors = [*model.parameters(), *model.buffers()]
    saved = [t.detach().clone() for t in tensors]
    was_training = model.training
    with torch.random.fork_rng(devices=[]), preserved_module_state(model):
        try:
            yield
        finally:
            with torch.no_grad():
                for tensor, value in zip(tensors, saved, strict=True):
                    tensor.copy_(value)
            model.train(was_training)


def observe(model: nn.Module, probe: torch.Tensor) -> Coverage:
    """Run ``model`` on ``probe`` in training and in eval mode and record what ran."""
    names = {id(m): name for name, m in model.named_modules()}
    parameters = {id(p): name for name, p in model.named_parameters()}
    coverage = Coverage()
    calls: dict[str, dict[str, set[str]]] = {}
    for mode in MODES:
        ran: set[str] = set()
        hooks = [
            m.register_forward_hook(lambda *_, name=name, ran=ran: ran.add(name))
            for name, m in model.named_modules()
            if isinstance(m, COMPUTE_TYPES)
        ]
        try:
            with _untouched(model), torch.no_grad(), _module_stack() as stack:
                model.train(mode == "train")
                with _FunctionalCalls(stack, names, parameters) as functional:
                    model(probe)
        except Exception as error:
            raise ValueError(
                f"{type(model).__name__} did not run in {mode} mode on an example input of "
                f"shape {tuple(probe.shape)} ({type(error).__name__}: {error}); pass "
                "example_input=<a batch the model accepts in training and eval mode>"
            ) from error
        finally:
            for hook in hooks:
                hook.remove()
        coverage.ran[mode] = ran
        for path, found in functional.calls.items():
            for call in found:
                calls.setdefault(path or type(model).__name__, {}).setdefault(call, set()).add(mode)
    for path, found in calls.items():
        coverage.functional[path] = "; ".join(
            f"{call} ({' and '.join(m for m in MODES if m in modes)} mode)"
            for call, modes in sorted(found.items())
        )
    return coverage


def require_run(coverage: Coverage, quantized: list[str], compute_paths: set[str]) -> None:
    """Raise unless every layer to quantize (that the float model has) runs in both modes.

    Layers that run in neither mode are left float by the selection before this check.
    """
    for mode in MODES:
        idle = [p for p in quantized if p in compute_paths and p not in coverage.ran[mode]]
        if not idle:
            continue
        owners = sorted({p.rpartition(".")[0] for p in idle} & set(coverage.functional))
        instead = (
            f"; {', '.join(owners)} call F.conv2d/F.linear themselves instead" if owners else ""
        )
        raise ValueError(
            f"quantize(): {', '.join(idle)} do not run in {mode} mode on the probe input"
            f"{instead}; quantized, they would leave the model float in {mode} mode. Make the "
            "forward call these layers in both modes (replace re-parameterised blocks by "
            "plain nn.Conv2d layers first), or exclude=[...] them"
        )
