"""Finding the repeated body of a network: a container whose blocks form a chain.

A chain is a Sequential or ModuleList whose children (two or more) are all of one class,
are each called once, keep the shape of what they consume, and each consume the output of
the one before (the residual blocks of MSRResNet and EDSR, RCAN's residual groups,
RRDBNet's RRDBs, the RSTB layers that SwinIR's forward iterates over, timm's ViT blocks).
Detection picks the outermost chain, then the longest, then the first.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .analysis import ModelAnalysis

CONTAINER_TYPES = (nn.Sequential, nn.ModuleList)


@dataclass(frozen=True)
class Body:
    """A chain of blocks held by one container.

    Attributes:
        path: qualified name of the container, e.g. ``"body"`` or ``"layers"``.
        block_type: class name of the blocks.
        depth: number of blocks.
    """

    path: str
    block_type: str
    depth: int


def _chain_problem(container: nn.Module, path: str, analysis: ModelAnalysis) -> str | None:
    """Why the container's children are not a chain, or None if they are."""
    if not isinstance(container, CONTAINER_TYPES):
        return f"it is a {type(container).__name__}, not an nn.Sequential or nn.ModuleList"
    names = list(container._modules)
    if len(names) < 2:
        return f"it holds {len(names)} block(s); a body needs two or more"
    classes = {type(child).__name__ for child in container.children()}
    if len(classes) > 1:
        return f"its children are of different classes ({', '.join(sorted(classes))})"
    first_name = {}
    for name, child in container._modules.items():
        if id(child) in first_name:
            return (
                f"{path}.{first_name[id(child)]} and {path}.{name} are the same block object "
                "(tied modules); build the body from separate blocks (copy.deepcopy each) to "
                "give it depth variants"
            )
        first_name[id(child)] = name
    previous_output, previous_shape = None, None
    for name in names:
        child_path = f"{path}.{name}"
        call = analysis.calls.get(child_path)
        if call is None:
            return f"{child_path} did not run on the example input"
        if call.output is None:
            return f"{child_path} runs more than once or has several outputs"
        if previous_output is None:
            shapes = [shape for _, shape in call.inputs if shape is not None]
            if call.output_shape not in shapes:
                return f"{child_path} changes the shape of its input"
        else:
            if previous_output not in [value for value, _ in call.inputs]:
                return f"{child_path} does not consume the output of the block before it"
            if call.output_shape != previous_shape:
                return f"{child_path} changes the shape of its input"
        previous_output, previous_shape = call.output, call.output_shape
    return None


def find_bodies(model: nn.Module, analysis: ModelAnalysis) -> list[Body]:
    """Every container in ``model`` whose children form a chain, outermost first."""
    bodies = []
    for path, module in model.named_modules():
        if path and _chain_problem(module, path, analysis) is None:
            first = next(iter(module.children()))
            bodies.append(Body(path, type(first).__name__, len(module)))
    return sorted(bodies, key=lambda b: (b.path.count("."), -b.depth))


def detect_body(model: nn.Module, analysis: ModelAnalysis) -> Body | None:
    """The outermost, then longest, then first chain; None when the model has none."""
    bodies = find_bodies(model, analysis)
    if not bodies:
        return None
    outermost = [b for b in bodies if b.path.count(".") == bodies[0].path.count(".")]
    return max(outermost, key=lambda b: b.depth)


def resolve_body(model: nn.Module, analysis: ModelAnalysis, path: str) -> Body:
    """The body the user named, checked to be a chain.

    Raises:
        ValueError: the path does not exist or its children are not a chain; the message
            lists the chains that were found.
    """
    try:
        container = model.get_submodule(path)
    except AttributeError:
        raise ValueError(
            f"body={path!r}: {type(model).__name__} has no submodule {path!r}; "
            f"{_found(model, analysis)}"
        ) from None
    problem = _chain_problem(container, path, analysis) if path else "it is the model itself"
    if problem:
        raise ValueError(
            f"body={path!r} is not a chain of blocks: {problem}; {_found(model, analysis)}"
        )
    return Body(path, type(next(iter(container.children()))).__name__, len(container))


def _found(model: nn.Module, analysis: ModelAnalysis) -> str:
    bodies = find_bodies(model, analysis)
    if not bodies:
        return "no chain of blocks was found in this model"
    return "chains found: " + ", ".join(f"{b.path!r} ({b.depth} x {b.block_type})" for b in bodies)
