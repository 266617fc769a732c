"""The lease reconciler: nothing the broker took from Vault outlives its welcome.

It revokes, in Vault, every recorded lease (or token accessor) that has expired or whose
credential was revoked but could not be revoked in Vault at the time (an outage). It
runs once at start-up, so no orphaned lease survives a broker restart, then periodically.
Revoking what Vault already expired is harmless (revocation is idempotent).
"""

from __future__ import annotations

import asyncio

import structlog

from broker.errors import Unavailable
from broker.lifecycle.release import release_at_issuer
from broker.tasks import stop_task
from broker.typing import Clock, Issuer, StateStore

__all__ = ["LeaseReconciler"]

log = structlog.get_logger(__name__)


class LeaseReconciler:
    """Periodically releases due leases."""

    def __init__(self, issuer: Issuer, state: StateStore, clock: Clock, interval: float) -> None:
        """Create the reconciler (nothing runs until `start`)."""
        self._issuer = issuer
        self._state = state
        self._clock = clock
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> int:
        """Release every due lease; stop at the first outage. Returns how many."""
        try:
            due = await self._state.leases_to_release(self._clock.time())
        except Unavailable:
            return 0
        released = 0
        for record in due:
            if not await release_at_issuer(self._issuer, self._state, record.credential_id):
                log.warning(
                    "lease reconciliation paused: Vault unavailable", pending=len(due) - released
                )
                break
            released += 1
        if released:
            log.info("leases reconciled", released=released)
        return released

    async def start(self) -> None:
        """Reconcile now, then every interval."""

        async def loop() -> None:
            while True:
                await self.run_once()
                await self._clock.sleep(self._interval)

        self._task = asyncio.create_task(loop(), name="lease-reconciler")

    async def close(self) -> None:
        """Stop."""
        await stop_task(self._task)
        self._task = None
