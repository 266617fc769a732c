"""The wall clock, injected everywhere time matters so tests can move it."""

from __future__ import annotations

import time
from datetime import UTC, datetime

__all__ = ["SystemClock"]


class SystemClock:
    """The real clock (UTC)."""

    __slots__ = ()

    def now(self) -> datetime:
        """Return the current time as an aware UTC datetime."""
        return datetime.now(UTC)

    def time(self) -> float:
        """Return the current time as seconds since the epoch."""
        return time.time()
