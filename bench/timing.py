"""Small timing helpers: best-of-N medians, so a noisy neighbour does not skew a figure."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def per_call_us(fn: Callable[[], object], *, calls: int, repeats: int = 5) -> float:
    """Median over `repeats` runs of the mean microseconds per call (after a warm-up)."""
    for _ in range(calls // 10):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(samples)
