"""Side-by-side timing: candidates measured in interleaved rounds in one process."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved_samples(
    candidates: dict[str, Callable[[], object]],
    rounds: int = 15,
    warmup: int = 3,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Seconds of each call of each candidate, alternating the candidates round by round.

    Alternating keeps slow drifts of a shared, noisy machine from favouring one candidate.
    ``clock`` is wall time by default; ``time.process_time`` (CPU seconds of this process)
    is steadier on a busy machine when torch runs one thread, as idle waits do not count.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    for _ in range(warmup):
        for run in candidates.values():
            run()
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, run in candidates.items():
            start = clock()
            run()
            samples[name].append(clock() - start)
    return samples


def interleaved_median_times(
    candidates: dict[str, Callable[[], object]], rounds: int = 15, warmup: int = 3
) -> dict[str, float]:
    """Median seconds per call of each candidate, measured as :func:`interleaved_samples`."""
    samples = interleaved_samples(candidates, rounds, warmup)
    return {name: statistics.median(times) for name, times in samples.items()}


def ratio_summary(samples: list[float], reference: list[float]) -> dict[str, float]:
    """Median and quartiles of the per-round ratios ``samples[i] / reference[i]``.

    Each round measured both within seconds of each other, so per-round ratios cancel the
    machine's slow load changes better than a ratio of medians does.

    Example:
        >>> ratio_summary([2.0, 2.2, 1.8], [1.0, 1.0, 1.0])["median"]
        2.0
    """
    if len(samples) != len(reference) or not samples:
        raise ValueError(
            f"need the same number (> 0) of samples and reference samples, got "
            f"{len(samples)} and {len(reference)}"
        )
    ratios = sorted(s / r for s, r in zip(samples, reference, strict=True))
    if len(ratios) == 1:
        low = high = ratios[0]
    else:
        low, _, high = statistics.quantiles(ratios, n=4, method="inclusive")
    return {"median": statistics.median(ratios), "q1": low, "q3": high}
