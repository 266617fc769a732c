"""A circuit breaker: stop calling a backend that keeps failing, try again later.

Closed: calls go through; `failures` consecutive failures open it. Open: calls fail at
once (503 with Retry-After) for `reset_seconds`. Then one trial call is let through
(half-open): success closes the breaker, failure opens it again.
"""

from __future__ import annotations

import math

from broker.errors import Unavailable
from broker.typing import Clock

__all__ = ["CircuitBreaker"]


class CircuitBreaker:
    """Counts consecutive failures of one backend."""

    def __init__(self, name: str, clock: Clock, *, failures: int, reset_seconds: float) -> None:
        """Create a closed breaker."""
        self._name = name
        self._clock = clock
        self._threshold = failures
        self._reset = reset_seconds
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_running = False

    @property
    def state(self) -> str:
        """`closed`, `open` or `half_open`."""
        if self._opened_at is None:
            return "closed"
        return "half_open" if self._clock.time() - self._opened_at >= self._reset else "open"

    def check(self) -> None:
        """Let a call through, or refuse it while open.

        Raises:
            Unavailable: The breaker is open (or a half-open trial is already running).
        """
        state = self.state
        if state == "closed":
            return
        if state == "half_open" and not self._trial_running:
            self._trial_running = True
            return
        assert self._opened_at is not None
        retry = max(1, math.ceil(self._opened_at + self._reset - self._clock.time()))
        raise Unavailable(
            f"{self._name} is unavailable (recent calls failed); retry in {retry} s",
            retry_after=retry,
            reason=f"{self._name.lower()}_unavailable",
        )

    def success(self) -> None:
        """A call succeeded: close."""
        self._failures = 0
        self._opened_at = None
        self._trial_running = False

    def failure(self) -> None:
        """A call failed: count it, open at the threshold (or at once after a trial)."""
        self._failures += 1
        if self._trial_running or self._failures >= self._threshold:
            self._opened_at = self._clock.time()
        self._trial_running = False
