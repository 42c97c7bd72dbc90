"""Peak memory of a training step, from the profiler's record of tensor allocations.

On CPU, ``tracemalloc`` does not see PyTorch's allocations, and the process RSS mixes in
the allocator's page retention (freed blocks are not always returned to the OS) and
libraries' arenas, so RSS deltas of two models can differ by more than their tensors.
``torch.profiler`` with ``profile_memory=True`` records every allocation and free made
through PyTorch's CPU allocator, in order; the running sum of those records is the memory
held by tensors created during the step (saved activations, gradients, temporaries).
Its maximum is the step's peak above the persistent state (parameters, optimizer state).
Memory that oneDNN or the compiled kernels allocate outside PyTorch's allocator is not
counted (for convolutions that is the same in the float and the quantized models).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile


def _allocation_sizes(prof: profile) -> list[int]:
    """Signed sizes (bytes; frees negative) of the recorded allocations, in time order."""
    try:
        tree = prof.profiler.kineto_results.experimental_event_tree()
        allocation = torch._C._profiler._EventType.Allocation
    except AttributeError as error:
        raise RuntimeError(
            f"torch {torch.__version__} has no profiler event tree ({error}); the memory "
            "benchmark needs torch >= 2.1"
        ) from error
    events, pending = [], list(tree)
    while pending:
        node = pending.pop()
        if node.tag == allocation:
            events.append((node.start_time_ns, node.extra_fields.alloc_size))
        pending.extend(node.children)
    return [size for _, size in sorted(events, key=lambda event: event[0])]


def peak_step_memory(step: Callable[[], object], warmup: int = 1) -> int:
    """Peak bytes held by tensors allocated during one call of ``step``.

    ``step`` runs ``warmup`` times first, so that lazily created state (optimizer moments,
    compiled kernels) is not counted as part of the step.

    Example:
        >>> layer = torch.nn.Linear(256, 256)
        >>> peak_step_memory(lambda: layer(torch.rand(64, 256)).sum().backward()) > 0
        True
    """
    for _ in range(warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    return max(itertools.accumulate(_allocation_sizes(prof)), default=0)
