"""A clock the tests move by hand."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta


class ManualClock:
    """Implements `broker.typing.Clock`; starts at the real time unless told otherwise.

    `sleep` returns once the clock has been advanced past its deadline, so tests drive
    background loops by moving time rather than by waiting.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime.now(UTC)
        self._moved = asyncio.Event()

    def now(self) -> datetime:
        return self._now

    def time(self) -> float:
        return self._now.timestamp()

    async def sleep(self, seconds: float) -> None:
        deadline = self.time() + seconds
        while self.time() < deadline:
            self._moved.clear()
            await self._moved.wait()

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)
        self._moved.set()

    def set(self, when: datetime) -> None:
        self._now = when
        self._moved.set()
