"""Side-by-side timing: candidates measured in interleaved rounds in one process."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved_median_times(
    candidates: dict[str, Callable[[], object]], rounds: int = 15, warmup: int = 3
) -> dict[str, float]:
    """Median seconds per call of each candidate, alternating them round by round.

    Alternating keeps slow drifts of a shared, noisy machine from favouring one candidate.
    """
    for _ in range(warmup):
        for run in candidates.values():
            run()
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, run in candidates.items():
            start = time.perf_counter()
            run()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(times) for name, times in samples.items()}
