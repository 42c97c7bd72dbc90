"""Depth-dynamic bodies (QuantSR's DQA): one set of block weights, several depths.

This module owns the depth container: which blocks each depth variant runs (the plan),
how a block's output is combined with its input, and the DQA parameters. Everything
else reads them through the container's methods.

A block computing ``f(x) = x + g(x)`` runs in variant ``v`` as ``alpha * x + s * g(x)``,
with ``g(x) = f(x) - x``: ``alpha`` is the block's learnable shortcut scale (one per block,
shared by the variants, initialised to 1) and ``s`` its learnable residual scale in that
variant (one per variant and block). A block the active variant skips outputs
``alpha * x``. No knowledge of the block's inside is needed; all variants share all weights.

Growing: when the deepest variant has more blocks than the body, new blocks are added.
Each is a copy of an original block and runs right after it; the original and its copies
form a group. In a variant that runs ``k`` blocks of a group, each of them starts with
``s = 1/k``: the group splits its source block's residual, so before training the deeper
variant computes nearly what the original block computed, and every grown block is in the
forward and backward pass from the first step, with the plain API (one optimiser, one
learning rate). A variant that runs no grown block starts with ``s = 1`` everywhere, so
the variant with the original depth computes the original network exactly. New blocks are
named after the original ones (``body.16`` ... for a 16-block body), so original
state-dict keys do not change. A body grows to at most ``MAX_GROWTH`` (4) times its depth.

Which blocks a variant of depth d runs (the membership policy):

- ``"spread"`` (default): original blocks are ranked in van der Corput order (0, N/2, N/4,
  3N/4, ...); a variant of depth d <= N runs the first d of that ranking, so variants are
  nested and spread evenly through the body. Deeper variants run all N originals plus the
  first d - N grown blocks in the same order.
- ``"prefix"``: the first d blocks (originals by position, then grown blocks in order).
- ``"importance"``: starts as ``"spread"``; :mod:`qsr_plugin.rewrite.importance` then ranks
  the original blocks by the loss increase when each is skipped, measured on data, and a
  variant of depth d < N keeps the d most important ones (grown blocks keep the spread order).
- explicit members: ``{depth: [block indices]}`` for any variant, overriding the policy.

Every block must belong to at least one variant (a block no variant runs would never be
trained or calibrated); such plans are refused when the container is built. The plan lives
in the ``membership`` buffer (variants x blocks, deepest variant first) and, under
``"importance"``, the last measured importance in ``block_importance`` (0 until measured),
so both travel with ``state_dict()`` and saved files.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn

POLICIES = ("spread", "prefix", "importance")
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


def _ranked_plan(
    original: int, depths: Sequence[int], original_ranking: Sequence[int], grown_ranking
) -> dict[int, tuple[int, ...]]:
    ranking = list(original_ranking) + [original + g for g in grown_ranking]
    return {d: tuple(sorted(ranking[:d])) for d in depths}


def plan_variants(
    original: int,
    depths: Sequence[int],
    policy: str = "spread",
    members: Mapping[int, Sequence[int]] | None = None,
    path: str = "body",
) -> dict[int, tuple[int, ...]]:
    """Block indices run by each depth variant (indices >= ``original`` are grown blocks).

    ``"importance"`` starts from the ``"spread"`` plan (see :func:`replan_by_importance`).

    Raises:
        ValueError: unknown policy, a variant deeper than ``MAX_GROWTH`` x ``original``,
            explicit members that do not fit their depth, or blocks that no variant runs
            (the message names them, e.g. ``body.4``, and the fix).
    """
    if policy not in POLICIES:
        raise ValueError(f"depth_policy must be one of {POLICIES}, got {policy!r}")
    if max(depths) > MAX_GROWTH * original:
        raise ValueError(
            f"depth_variants={list(depths)}: the deepest variant would grow the body of "
            f"{original} blocks to {max(depths)}, more than {MAX_GROWTH} x its depth (grown "
            "blocks are copies of the originals, so most would learn little); use depths up "
            f"to {MAX_GROWTH * original} or a model with a deeper body"
        )
    total = max(max(depths), original)
    grown = total - original
    if policy == "prefix":
        plan = _ranked_plan(original, depths, range(original), range(grown))
    else:
        plan = _ranked_plan(
            original, depths, van_der_corput_order(original), van_der_corput_order(grown)
        )
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
    unused = sorted(set(range(total)).difference(*plan.values()))
    if unused:  # only when the deepest variant is shallower than the body
        names = ", ".join(f"{path}.{i}" for i in unused)
        raise ValueError(
            f"depth_variants={list(depths)} leave {names} of the {original}-block body "
            f"{path!r} unused: no variant runs them, so they would never be calibrated or "
            f"trained; add {original} to depth_variants (e.g. "
            f"{sorted({original, *depths}, reverse=True)})"
        )
    return plan


def initial_residual_scales(
    plan: Mapping[int, Iterable[int]], total: int, group_of: Sequence[int]
) -> torch.Tensor:
    """Residual scales ``s`` (variants deepest first x blocks): ``1/k`` for each of the ``k``
    blocks of a group that a variant runs, 1 elsewhere."""
    depths = sorted(plan, reverse=True)
    scales = torch.ones(len(depths), total)
    for row, depth in enumerate(depths):
        chosen = set(plan[depth])
        for index in chosen:
            running = sum(1 for j in chosen if group_of[j] == group_of[index])
            scales[row, index] = 1.0 / running
    return scales


def _reread_plan(container: _DepthSwitchable, _incompatible_keys) -> None:
    container._read_plan()


class _DepthSwitchable:
    """The DQA logic shared by the Sequential and ModuleList containers."""

    def _init_depth(
        self,
        blocks: Sequence[nn.Module],
        original: int,
        plan: Mapping[int, Sequence[int]],
        policy: str,
    ) -> None:
        total = len(blocks)
        self.block_names = tuple(self._modules)
        sources = grown_sources(original, total - original) if total > original else []
        order: list[int] = []
        for index in range(original):
            order.append(index)
            order.extend(original + j for j, source in enumerate(sources) if source == index)
        self.original_depth = original
        self.grown_from = tuple(sources)
        self.group_of = tuple(range(original)) + self.grown_from
        self.execution_order = tuple(order)
        self.policy = policy
        self.depths = tuple(sorted(plan, reverse=True))
        reference = next(iter(blocks[0].parameters()), torch.empty(0))
        options = {"device": reference.device, "dtype": reference.dtype}
        self.shortcut_scale = nn.Parameter(torch.ones(total, **options))
        self.residual_scale = nn.Parameter(
            initial_residual_scales(plan, total, self.group_of).to(**options)
        )
        self.register_buffer(
            "membership",
            torch.zeros(len(self.depths), total, dtype=torch.bool, device=options["device"]),
        )
        if policy == "importance":  # the last measurement (0 until the first)
            self.register_buffer("block_importance", torch.zeros(original, **options))
        self.active_depth = self.depths[0]
        self._feature_sink: dict[int, torch.Tensor] | None = None
        self._skipped: frozenset[int] = frozenset()
        self.set_plan(plan)
        self.register_load_state_dict_post_hook(_reread_plan)

    # -- the plan ---------------------------------------------------------------------
    def set_plan(self, plan: Mapping[int, Sequence[int]]) -> None:
        """Make each depth run the given block indices (all depths, same as now)."""
        if set(plan) != set(self.depths):
            raise ValueError(
                f"a plan needs one entry per depth {list(self.depths)}, got {sorted(plan)}"
            )
        with torch.no_grad():
            self.membership.zero_()
            for row, depth in enumerate(self.depths):
                self.membership[row, list(plan[depth])] = True
        self._read_plan()

    def _read_plan(self) -> None:
        """Cache the plan held by ``membership`` (after building, re-planning and loading)."""
        rows = self.membership.cpu().tolist()
        self._plan = {
            depth: frozenset(i for i, on in enumerate(rows[row]) if on)
            for row, depth in enumerate(self.depths)
        }
        self._row = {depth: row for row, depth in enumerate(self.depths)}

    @property
    def depth_variants(self) -> list[int]:
        """The depths this body can run, deepest first."""
        return list(self.depths)

    def plan(self) -> dict[int, list[int]]:
        """Block indices each depth runs, sorted (``{16: [0, ..., 15], 8: [...], ...}``)."""
        return {depth: sorted(chosen) for depth, chosen in self._plan.items()}

    def set_depth(self, depth: int) -> None:
        """Run ``depth`` blocks from now on (one of :attr:`depth_variants`)."""
        if depth not in self._plan:
            raise ValueError(
                f"depth {depth!r} is not a depth variant of this model; "
                f"choose one of {self.depth_variants}"
            )
        self.active_depth = depth

    def members(self, depth: int | None = None) -> list[int]:
        """Indices of the blocks that ``depth`` (default: the active depth) runs, in order."""
        chosen = self._plan[self.active_depth if depth is None else depth]
        return [i for i in self.execution_order if i in chosen]

    def float_body(self) -> nn.Sequential | nn.ModuleList:
        """The body this container was built from: its original blocks (the same objects)."""
        blocks = [(name, self._modules[name]) for name in self.block_names[: self.original_depth]]
        if isinstance(self, nn.Sequential):
            return nn.Sequential(OrderedDict(blocks)).train(self.training)
        return nn.ModuleList(block for _, block in blocks).train(self.training)

    def grown_blocks(self) -> dict[str, str]:
        """Name of each grown block -> name of the original block it was copied from."""
        return {
            self.block_names[self.original_depth + offset]: self.block_names[source]
            for offset, source in enumerate(self.grown_from)
        }

    def group(self, index: int) -> list[int]:
        """Original block ``index`` and the blocks grown from it."""
        return [i for i in range(len(self.group_of)) if self.group_of[i] == index]

    def dqa_tensors(self) -> dict[str, torch.Tensor]:
        """The container's own parameters and buffers (not its blocks'), by local name."""
        own = dict(self.named_parameters(recurse=False))
        own.update(self.named_buffers(recurse=False))
        return own

    def step_scales(self, depth: int, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(alpha, s)`` of block ``index`` in variant ``depth``; ``s`` is None when the
        variant skips the block."""
        alpha = self.shortcut_scale[index]
        if index not in self._plan[depth]:
            return alpha, None
        return alpha, self.residual_scale[self._row[depth], index]

    # -- running ----------------------------------------------------------------------
    @contextlib.contextmanager
    def skipping(self, indices: Iterable[int]) -> Iterator[None]:
        """Skip these blocks as well, inside the ``with`` block (for importance measurement)."""
        previous, self._skipped = self._skipped, frozenset(indices)
        try:
            yield
        finally:
            self._skipped = previous

    @contextlib.contextmanager
    def recording_features(self) -> Iterator[dict[int, torch.Tensor]]:
        """Collect, per original block, the output of its group where the active variant
        runs it (``{original index: tensor}``), inside the ``with`` block."""
        previous, self._feature_sink = self._feature_sink, {}
        try:
            yield self._feature_sink
        finally:
            self._feature_sink = previous

    def _run_block(self, index: int, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        alpha, scale = self.step_scales(self.active_depth, index)
        if scale is None or index in self._skipped:
            return alpha * x
        out = self._modules[self.block_names[index]](x, *args, **kwargs)
        # = alpha * x + scale * (out - x), written so that alpha = scale = 1 gives out exactly
        result = out + (alpha - 1) * x + (scale - 1) * (out - x)
        if self._feature_sink is not None:
            self._feature_sink[self.group_of[index]] = result
        return result

    def _block_calls(self) -> Iterator:
        for index in self.execution_order:
            yield functools.partial(self._run_block, index)

    def extra_repr(self) -> str:
        grown = f", grown from {self.original_depth}" if self.grown_from else ""
        return (
            f"depth_variants={self.depth_variants}, active_depth={self.active_depth}, "
            f"policy={self.policy!r}{grown}"
        )


class DepthSwitchableSequential(_DepthSwitchable, nn.Sequential):
    """A depth-switchable body that replaces an ``nn.Sequential`` of blocks."""

    def __init__(self, named_blocks, original: int, plan, policy: str = "spread") -> None:
        nn.Sequential.__init__(self, OrderedDict(named_blocks))
        self._init_depth([m for _, m in named_blocks], original, plan, policy)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for run in self._block_calls():
            x = run(x)
        return x


class DepthSwitchableModuleList(_DepthSwitchable, nn.ModuleList):
    """A depth-switchable body that replaces an ``nn.ModuleList`` the parent iterates.

    Iterating yields one callable per block in execution order (skipped blocks included,
    as ``alpha * x``); indexing still returns the stored blocks.
    """

    def __init__(self, named_blocks, original: int, plan, policy: str = "spread") -> None:
        nn.ModuleList.__init__(self, [m for _, m in named_blocks])
        self._init_depth([m for _, m in named_blocks], original, plan, policy)

    def __iter__(self) -> Iterator:
        return self._block_calls()

    def __repr__(self) -> str:
        # nn.ModuleList's repr iterates the container, which yields block calls here.
        return nn.Module.__repr__(self)


def build_depth_switchable(
    container: nn.Module, plan: Mapping[int, Sequence[int]], policy: str = "spread"
) -> DepthSwitchableSequential | DepthSwitchableModuleList:
    """A DQA container holding ``container``'s blocks (the same objects) plus grown copies."""
    named = list(container._modules.items())
    original = len(named)
    total = max(max(plan), original)
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
    return kind(named, original, plan, policy).train(container.training)


def depth_switchable_bodies(model: nn.Module) -> list[tuple[str, _DepthSwitchable]]:
    """Every DQA container in ``model`` with its qualified name."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _DepthSwitchable)]
