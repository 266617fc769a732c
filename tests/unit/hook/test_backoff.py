"""Exponential backoff with full jitter."""

from __future__ import annotations

import random

from broker.hook.backoff import Backoff


def test_ceilings_double_up_to_the_cap() -> None:
    """Retry n draws from [0, min(cap, initial * 2**n)]."""
    draws: list[tuple[float, float]] = []
    backoff = Backoff(0.5, 3.0, uniform=lambda a, b: draws.append((a, b)) or b)
    delays = [backoff.delay(n) for n in range(5)]
    assert draws == [(0.0, 0.5), (0.0, 1.0), (0.0, 2.0), (0.0, 3.0), (0.0, 3.0)]
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert backoff.ceiling(10_000) == 3.0


def test_full_jitter_spreads_delays_over_the_whole_range() -> None:
    """With the real random source, delays fall anywhere in [0, ceiling], not at fixed points."""
    backoff = Backoff(1.0, 8.0, uniform=random.Random(7).uniform)  # noqa: S311 - jitter
    delays = [backoff.delay(3) for _ in range(200)]
    assert all(0.0 <= d <= 8.0 for d in delays)
    assert min(delays) < 1.0
    assert max(delays) > 7.0


def test_retry_after_is_a_floor() -> None:
    """The broker's Retry-After is never undercut by the jitter."""
    backoff = Backoff(0.5, 30.0, uniform=lambda a, b: a)
    assert backoff.delay(0, retry_after=7.0) == 7.0
    assert backoff.delay(0) == 0.0
