"""How many CPU threads the demo gives torch."""

from __future__ import annotations

import os

import torch


def available_cores() -> int:
    """CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def choose_threads(requested: int | None) -> tuple[int, str]:
    """The thread count to use and why.

    ``requested`` wins when given. Otherwise torch's own choice (one per core), except on a
    machine whose load average already reaches its core count: there, several threads per
    process wait on each other at every parallel step, and a single thread is faster
    (measured 3-5x on a 2-core machine shared with other training jobs).

    Example:
        >>> choose_threads(3)
        (3, 'requested with --threads')
    """
    if requested is not None:
        return requested, "requested with --threads"
    cores = available_cores()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if cores > 1 and load >= cores:
        return 1, (
            f"the machine is busy (load average {load:.1f} on {cores} cores), where one "
            "thread runs faster; --threads N overrides"
        )
    return torch.get_num_threads(), f"one per core ({cores} cores); --threads N overrides"
