"""The wall clock, injected everywhere time matters so tests can move it."""

from __future__ import annotations

import asyncio
import functools
import math
import time
from datetime import UTC, datetime

__all__ = ["SystemClock", "rfc3339"]


class SystemClock:
    """The real clock (UTC)."""

    __slots__ = ()

    def now(self) -> datetime:
        """Return the current time as an aware UTC datetime."""
        return datetime.now(UTC)

    def time(self) -> float:
        """Return the current time as seconds since the epoch."""
        return time.time()

    async def sleep(self, seconds: float) -> None:
        """Sleep on the event loop."""
        await asyncio.sleep(seconds)


def rfc3339(when: datetime | float) -> str:
    """An instant as RFC 3339 UTC with whole seconds (`2026-11-21T10:05:00Z`).

    Args:
        when: An aware datetime, or seconds since the epoch.
    """
    seconds = when.timestamp() if isinstance(when, datetime) else when
    return _rfc3339_second(math.floor(seconds))


@functools.lru_cache(maxsize=1024)
def _rfc3339_second(seconds: int) -> str:
    # Many records and credentials per second share their timestamps: format each once.
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")
