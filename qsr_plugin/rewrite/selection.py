"""Which Conv2d/Linear layers of a model get quantized."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from torch import nn

from ..layers import COMPUTE_TYPES, layer_types

IDLE_REASON = (
    "did not run on the probe input, in training or eval mode (its quantizers would never see data)"
)


@dataclass(frozen=True)
class Selection:
    """The layers to quantize, the in-scope layers kept in float with the reason, and why
    each layer that stays float does (``left_float``, every Conv2d/Linear not quantized)."""

    quantize: list[str]
    kept_float: dict[str, str]
    left_float: dict[str, str]


def _compute_layers(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, COMPUTE_TYPES)]


def _matching(names: list[str], patterns: tuple[str, ...], argument: str) -> set[str]:
    matched: set[str] = set()
    for pattern in patterns:
        hits = {n for n in names if fnmatch.fnmatchcase(n, pattern)}
        if not hits:
            raise ValueError(
                f"{argument} pattern {pattern!r} matches no Conv2d/Linear layer; layer names "
                f"look like {', '.join(names[:3]) or '(none)'} (glob syntax: * and ?)"
            )
        matched |= hits
    return matched


def _unsupported_reason(module: nn.Module) -> str | None:
    try:
        layer_types(module).quantized._check_convertible(module)
    except ValueError as error:
        return str(error)
    return None


def select_layers(
    model: nn.Module,
    scope: str,
    body_path: str | None,
    compute_order: list[str],
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    idle: set[str] = frozenset(),
) -> Selection:
    """Apply scope, then ``include`` and ``exclude`` patterns; set aside unsupported layers
    and ``idle`` ones (which ran neither in training nor in eval mode on the probe).

    ``scope="body"`` takes every Conv2d/Linear under ``body_path``; ``scope="all"`` every
    Conv2d/Linear except the first and last ones that run (``compute_order``).
    """
    names = _compute_layers(model)
    if scope == "body":
        prefix = f"{body_path}."
        chosen = {n for n in names if body_path is not None and n.startswith(prefix)}
    else:
        ends = {compute_order[0], compute_order[-1]} if compute_order else set()
        chosen = set(names) - ends
    out_of_scope = (
        f"outside the body {body_path!r}, scope='body'"
        if scope == "body"
        else "the first or last layer to run, scope='all'"
    )
    left_float = dict.fromkeys(set(names) - chosen, out_of_scope)
    chosen |= _matching(names, include, "include")
    excluded = _matching(names, exclude, "exclude")
    left_float.update(dict.fromkeys(excluded, "matches exclude"))
    chosen -= excluded
    kept_float = {}
    for name in sorted(chosen):
        if name in idle:
            kept_float[name] = left_float[name] = IDLE_REASON
            continue
        reason = _unsupported_reason(model.get_submodule(name))
        if reason:
            kept_float[name] = reason
            left_float[name] = "unsupported: " + reason.split(";")[0]
    quantize = [n for n in names if n in chosen and n not in kept_float]
    left_float = {n: left_float[n] for n in names if n in left_float and n not in quantize}
    return Selection(quantize, kept_float, left_float)
