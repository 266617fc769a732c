"""Exponential backoff with full jitter (AWS Architecture Blog, "Exponential Backoff and Jitter").

Attempt n waits a uniformly random time in [0, min(cap, initial * 2**n)]: retries of many
pods spread out instead of arriving together when the broker comes back. A `Retry-After`
from the broker is a floor.
"""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["Backoff"]

_MAX_EXPONENT = 32  # 2**32 * any sensible initial delay is far beyond any cap


class Backoff:
    """Delays for successive retries."""

    def __init__(
        self,
        initial: float,
        cap: float,
        *,
        uniform: Callable[[float, float], float] = random.uniform,  # jitter, not a secret
    ) -> None:
        """Create the schedule.

        Args:
            initial: The ceiling of the first delay, seconds.
            cap: The largest ceiling, seconds.
            uniform: Draws from [a, b] (injected by tests).
        """
        self._initial = initial
        self._cap = cap
        self._uniform = uniform

    def ceiling(self, attempt: int) -> float:
        """The largest delay of retry number `attempt` (0 for the first retry)."""
        return min(self._cap, self._initial * 2.0 ** min(attempt, _MAX_EXPONENT))

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """How long to wait before retry number `attempt` (0 for the first retry).

        Args:
            attempt: How many retries came before this one.
            retry_after: The broker's `Retry-After`, seconds: never wait less.
        """
        return max(self._uniform(0.0, self.ceiling(attempt)), retry_after or 0.0)
