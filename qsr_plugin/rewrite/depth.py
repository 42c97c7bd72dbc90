"""Depth-dynamic bodies (QuantSR's DQA): one set of block weights, several depths.

Every block of the body gets a learnable shortcut scale alpha (initialised to 1). A block
computing ``f(x) = x + g(x)`` runs as ``alpha * x + g(x)``, i.e. ``f(x) + (alpha - 1) * x``,
which needs no knowledge of the block's inside; a block that the active depth variant skips
outputs ``alpha * x``. All variants share all weights.

Growing: when the deepest variant has more blocks than the body, new blocks are added.
Each is a copy of an original block, runs right after it, and computes
``alpha * x + gamma * (f(x) - x)`` with a learnable gate gamma initialised to 0, so before
training the grown model computes exactly what the original computed. New blocks are named
after the original ones (``body.16`` ... for a 16-block body), so original state-dict keys
do not change; the variant with the original depth runs exactly the original blocks.
A body grows to at most ``MAX_GROWTH`` (4) times its depth; deeper variants are refused.

Which blocks a variant of depth d runs (the membership policy):

- ``"spread"`` (default): original blocks are ranked in van der Corput order (0, N/2, N/4,
  3N/4, ...); a variant of depth d <= N runs the first d of that ranking, so variants are
  nested and spread evenly through the body. Deeper variants run all N originals plus the
  first d - N grown blocks in the same order.
- ``"prefix"``: the first d blocks (originals by position, then grown blocks in order).
- explicit members: ``{depth: [block indices]}`` for any variant, overriding the policy.
"""

from __future__ import annotations

import copy
import functools
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import nn

POLICIES = ("spread", "prefix")
MAX_GROWTH = 4  # the deepest variant may have at most this many times the body's blocks


def van_der_corput_order(count: int) -> list[int]:
    """Indices 0..count-1 ranked so that every prefix is spread evenly over the range."""
    ranked: list[int] = []
    i = 0
    while len(ranked) < count:
        fraction, denominator, n = 0.0, 1.0, i
        while n:
            denominator *= 2
            fraction += (n % 2) / denominator
            n //= 2
        index = int(fraction * count)
        if index not in ranked:
            ranked.append(index)
        i += 1
    return ranked


def grown_sources(original: int, grown: int) -> list[int]:
    """Which original block each of ``grown`` new blocks copies (spread over the body)."""
    return [int((j + 0.5) * original / grown) for j in range(grown)]


def plan_variants(
    original: int,
    depths: Sequence[int],
    policy: str = "spread",
    members: Mapping[int, Sequence[int]] | None = None,
) -> dict[int, tuple[int, ...]]:
    """Block indices run by each depth variant (indices >= ``original`` are grown blocks).

    Raises:
        ValueError: unknown policy, a variant deeper than ``MAX_GROWTH`` x ``original``, or
            explicit members that do not fit their depth.
    """
    if policy not in POLICIES:
        raise ValueError(f"depth_policy must be one of {POLICIES}, got {policy!r}")
    if max(depths) > MAX_GROWTH * original:
        raise ValueError(
            f"depth_variants={list(depths)}: the deepest variant would grow the body of "
            f"{original} blocks to {max(depths)}, more than {MAX_GROWTH} x its depth (grown "
            "blocks are copies of the originals that start as identities, so most would learn "
            f"little); use depths up to {MAX_GROWTH * original} or a model with a deeper body"
        )
    total = max(max(depths), original)
    grown = total - original
    if policy == "spread":
        ranking = van_der_corput_order(original) + [
            original + g for g in van_der_corput_order(grown)
        ]
    else:
        ranking = list(range(total))
    plan = {d: tuple(sorted(ranking[:d])) for d in depths}
    for depth, chosen in (members or {}).items():
        if depth not in plan:
            raise ValueError(
                f"depth_members has depth {depth}, which is not in depth_variants {list(depths)}"
            )
        chosen = tuple(sorted(chosen))
        if len(set(chosen)) != depth or not all(0 <= i < total for i in chosen):
            raise ValueError(
                f"depth_members[{depth}] must list {depth} distinct block indices in "
                f"0..{total - 1}, got {list(chosen)}"
            )
        plan[depth] = chosen
    return plan


class _DepthSwitchable:
    """The DQA logic shared by the Sequential and ModuleList containers."""

    def _init_depth(
        self,
        blocks: Sequence[nn.Module],
        original: int,
        variants: Mapping[int, Sequence[int]],
    ) -> None:
        total = len(blocks)
        self.block_names = tuple(self._modules)
        sources = grown_sources(original, total - original) if total > original else []
        order: list[int] = []
        for index in range(original):
            order.append(index)
            order.extend(original + j for j, source in enumerate(sources) if source == index)
        reference = next(iter(blocks[0].parameters()), torch.empty(0))
        options = {"device": reference.device, "dtype": reference.dtype}
        self.shortcut_scale = nn.Parameter(torch.ones(total, **options))
        self.residual_gate = (
            nn.Parameter(torch.zeros(total - original, **options)) if sources else None
        )
        self.original_depth = original
        self.grown_from = tuple(sources)
        self.execution_order = tuple(order)
        self.variants = {d: frozenset(m) for d, m in sorted(variants.items(), reverse=True)}
        self.active_depth = max(self.variants)

    @property
    def depth_variants(self) -> list[int]:
        """The depths this body can run, deepest first."""
        return list(self.variants)

    def set_depth(self, depth: int) -> None:
        """Run ``depth`` blocks from now on (one of :attr:`depth_variants`)."""
        if depth not in self.variants:
            raise ValueError(
                f"depth {depth!r} is not a depth variant of this model; "
                f"choose one of {self.depth_variants}"
            )
        self.active_depth = depth

    def members(self, depth: int | None = None) -> list[int]:
        """Indices of the blocks that ``depth`` (default: the active depth) runs, in order."""
        chosen = self.variants[self.active_depth if depth is None else depth]
        return [i for i in self.execution_order if i in chosen]

    def _run_block(self, index: int, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        alpha = self.shortcut_scale[index]
        if index not in self.variants[self.active_depth]:
            return alpha * x
        out = self._modules[self.block_names[index]](x, *args, **kwargs)
        if index < self.original_depth:
            return out + (alpha - 1) * x
        gate = self.residual_gate[index - self.original_depth]
        return alpha * x + gate * (out - x)

    def _block_calls(self) -> Iterator:
        for index in self.execution_order:
            yield functools.partial(self._run_block, index)

    def extra_repr(self) -> str:
        grown = f", grown from {self.original_depth}" if self.grown_from else ""
        return f"depth_variants={self.depth_variants}, active_depth={self.active_depth}{grown}"


class DepthSwitchableSequential(_DepthSwitchable, nn.Sequential):
    """A depth-switchable body that replaces an ``nn.Sequential`` of blocks."""

    def __init__(self, named_blocks, original: int, variants) -> None:
        nn.Sequential.__init__(self, OrderedDict(named_blocks))
        self._init_depth([m for _, m in named_blocks], original, variants)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for run in self._block_calls():
            x = run(x)
        return x


class DepthSwitchableModuleList(_DepthSwitchable, nn.ModuleList):
    """A depth-switchable body that replaces an ``nn.ModuleList`` the parent iterates.

    Iterating yields one callable per block in execution order (skipped blocks included,
    as ``alpha * x``); indexing still returns the stored blocks.
    """

    def __init__(self, named_blocks, original: int, variants) -> None:
        nn.ModuleList.__init__(self, [m for _, m in named_blocks])
        self._init_depth([m for _, m in named_blocks], original, variants)

    def __iter__(self) -> Iterator:
        return self._block_calls()

    def __repr__(self) -> str:
        # nn.ModuleList's repr iterates the container, which yields block calls here.
        return nn.Module.__repr__(self)


def build_depth_switchable(
    container: nn.Module, variants: Mapping[int, Sequence[int]]
) -> DepthSwitchableSequential | DepthSwitchableModuleList:
    """A DQA container holding ``container``'s blocks (the same objects) plus grown copies."""
    named = list(container._modules.items())
    original = len(named)
    total = max(max(variants), original)
    for j, source in enumerate(grown_sources(original, total - original)):
        name = str(original + j)
        if name in container._modules:
            raise ValueError(f"cannot grow {type(container).__name__}: it already has a {name!r}")
        named.append((name, copy.deepcopy(named[source][1])))
    kind = (
        DepthSwitchableSequential
        if isinstance(container, nn.Sequential)
        else (DepthSwitchableModuleList)
    )
    return kind(named, original, variants).train(container.training)


def depth_switchable_bodies(model: nn.Module) -> list[tuple[str, _DepthSwitchable]]:
    """Every DQA container in ``model`` with its qualified name."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _DepthSwitchable)]
