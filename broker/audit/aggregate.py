"""Failed authentications that named no identity, audited in aggregate.

A request whose `Authorization` header does not even parse as a JWT claims no identity;
writing (and fsyncing) one audit record for each would let anyone turn garbage headers
into disk writes. Such failures are counted in memory and written as one `auth.failed`
record per interval (`target`: how many, for which reasons, from how many addresses).
A failure that names an identity (a client certificate, or a JWT claiming a `sub`) is
still audited one by one, before its 401. A count that cannot be written is kept and
written with the next one: nothing is dropped while the broker runs.
"""

from __future__ import annotations

import asyncio
import collections

import structlog

from broker.audit.events import AuditEvent
from broker.clock import rfc3339
from broker.errors import Unavailable
from broker.tasks import stop_task
from broker.typing import AuditSink, Clock

__all__ = ["UnparsedFailures"]

log = structlog.get_logger(__name__)

DEFAULT_INTERVAL_SECONDS = 10.0
MAX_REASONS = 16
MAX_REMOTES = 1024


class UnparsedFailures:
    """Counts failures without an identity; writes them as one record per interval."""

    def __init__(
        self, audit: AuditSink, clock: Clock, interval: float = DEFAULT_INTERVAL_SECONDS
    ) -> None:
        """Create the aggregator (its loop runs from `start` to `close`)."""
        self._audit = audit
        self._clock = clock
        self._interval = interval
        self._count = 0
        self._reasons: collections.Counter[str] = collections.Counter()
        self._remotes: set[str] = set()
        self._since = clock.now()
        self._task: asyncio.Task[None] | None = None

    def add(self, reason: str, remote: str | None) -> None:
        """Count one failure (no I/O)."""
        self._count += 1
        if reason in self._reasons or len(self._reasons) < MAX_REASONS:
            self._reasons[reason] += 1
        if remote is not None and len(self._remotes) < MAX_REMOTES:
            self._remotes.add(remote)

    async def flush(self) -> None:
        """Write what was counted since the last record, if anything."""
        if not self._count:
            return
        now = self._clock.now()
        event = AuditEvent(
            event="auth.failed",
            ts=now,
            request_id=None,
            remote=None,
            decision="deny",
            reasons=("unparsed_identity",),
            target={
                "count": self._count,
                "since": rfc3339(self._since),
                "reasons": dict(self._reasons.most_common()),
                "remotes": len(self._remotes),
            },
        )
        try:
            await self._audit.write(event)
        except Unavailable:
            log.warning("aggregated auth failures not yet audited", count=self._count)
            return
        self._count = 0
        self._reasons.clear()
        self._remotes.clear()
        self._since = now

    async def start(self) -> None:
        """Write the aggregate every interval."""

        async def loop() -> None:
            while True:
                await self._clock.sleep(self._interval)
                await self.flush()

        self._task = asyncio.create_task(loop(), name="auth-failures")

    async def close(self) -> None:
        """Stop, writing what is left."""
        await stop_task(self._task)
        self._task = None
        await self.flush()
