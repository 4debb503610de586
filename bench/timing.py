"""Small timing helpers: best-of-N CPU time of a callable on this thread."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def best_thread_seconds(work: Callable[[], object], repeats: int) -> float:
    """The fastest of `repeats` runs, in CPU seconds of this thread (one core, other threads excluded)."""
    best = float("inf")
    for _ in range(repeats):
        started = time.thread_time()
        work()
        best = min(best, time.thread_time() - started)
    return best


def median(values: list[float]) -> float:
    """The median."""
    return float(statistics.median(values))


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile (`share` in 0..1)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]
