"""The lease reconciler: nothing the broker took from Vault outlives its welcome.

Two jobs, every `reconcile_seconds`:

1. It revokes, in Vault, every recorded lease (or token accessor) that has expired or
   whose credential was revoked but could not be revoked in Vault at the time (an
   outage). It runs once at start-up, so no orphaned lease survives a broker restart.
   Revoking what Vault already expired is harmless (revocation is idempotent).
2. The orphan sweep: a request whose answer never came back (a timeout, a dropped
   connection, a crash) may still have been carried out by Vault, leaving a lease, a
   child token or a wrapping token nobody recorded. The sweep lists what Vault holds
   under the tools' paths (`Inventory`) and revokes each credential that the state store
   does not know and that is older than `grace` by Vault's own clock, so an issuance in
   flight (Vault answered, the record not yet written) is never raced. It runs at
   start-up, `grace` after the last unanswered Vault call, again when a candidate too
   young to judge comes of age, and every `sweep_seconds` otherwise.

A recorded credential is never swept: known to the state store means live (or already
due to job 1). When the state store cannot answer, the sweep stops: unknown is not absent.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import structlog

from broker.errors import Unavailable
from broker.lifecycle.release import release_at_issuer
from broker.tasks import stop_task
from broker.typing import Clock, Issuer, StateStore

if TYPE_CHECKING:
    from broker.vault.client import VaultClient

__all__ = ["Inventory", "LeaseReconciler", "Leftover", "OrphanSweep"]

log = structlog.get_logger(__name__)

# Vault reports TTLs in whole seconds: an age is known to within one.
AGE_SLACK_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Leftover:
    """A credential Vault holds that one of the broker's tools could have created.

    Attributes:
        credential_id: The lease id or token accessor (what the broker would record).
        age: Seconds since Vault created it, by Vault's clock.
    """

    credential_id: str
    age: float


class Inventory(Protocol):
    """What Vault holds under the tools' paths."""

    async def listed(self) -> list[str]:
        """Every candidate credential id (lease ids, token accessors).

        Raises:
            Unavailable: Vault cannot be reached.
        """
        ...

    async def inspect(self, credential_id: str) -> Leftover | None:
        """The candidate's age if a tool of the broker could have created it, else None.

        Raises:
            Unavailable: Vault cannot be reached.
        """
        ...


@dataclass(frozen=True, slots=True)
class OrphanSweep:
    """How the reconciler finds orphans.

    Attributes:
        inventory: What Vault holds under the tools' paths.
        client: The Vault client, whose unanswered calls schedule a sweep.
        grace: Minimum age (Vault's clock) of an unknown credential before it is revoked.
        every: Interval of the sweep when nothing failed.
    """

    inventory: Inventory
    client: VaultClient
    grace: float
    every: float


class LeaseReconciler:
    """Periodically releases due leases and revokes orphans."""

    def __init__(
        self,
        issuer: Issuer,
        state: StateStore,
        clock: Clock,
        interval: float,
        *,
        orphans: OrphanSweep | None = None,
    ) -> None:
        """Create the reconciler (nothing runs until `start`).

        Args:
            issuer: Revokes credentials in Vault.
            state: What the broker recorded.
            clock: For schedules.
            interval: Seconds between runs.
            orphans: How to find orphans; None: no sweep.
        """
        self._issuer = issuer
        self._state = state
        self._clock = clock
        self._interval = interval
        self._orphans = orphans
        self._task: asyncio.Task[None] | None = None
        self._sweep_due = clock.time()  # at start-up: a crash may have left some
        self._unanswered_seen = 0
        self.orphans_revoked = 0

    async def run_once(self) -> int:
        """Release every due lease (stop at the first outage), then sweep if due.

        Returns:
            How many recorded leases were released.
        """
        released = await self._release_due()
        if self._orphans is not None:
            await self._sweep_if_due(self._orphans)
        return released

    async def _release_due(self) -> int:
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

    async def _sweep_if_due(self, orphans: OrphanSweep) -> None:
        now = self._clock.time()
        unanswered = orphans.client.unanswered
        if unanswered != self._unanswered_seen:
            # Vault may carry out an unanswered call later (when it comes back): look once
            # the grace has passed since the last one.
            self._unanswered_seen = unanswered
            self._sweep_due = min(
                self._sweep_due, orphans.client.last_unanswered_at + orphans.grace
            )
        if now < self._sweep_due:
            return
        self._sweep_due = now + orphans.every
        try:
            wait = await self.sweep(orphans)
        except Unavailable as exc:
            # An outage counts as unanswered calls, which schedule the next try.
            log.warning("orphan sweep interrupted", reason=exc.detail)
            return
        if wait is not None:
            self._sweep_due = min(self._sweep_due, now + wait)

    async def sweep(self, orphans: OrphanSweep) -> float | None:
        """Revoke every orphan old enough; report when the youngest candidate will be.

        Returns:
            Seconds until an unknown candidate that was too young is old enough, if any.

        Raises:
            Unavailable: Vault or the state store cannot answer (nothing more is revoked).
        """
        listed = await orphans.inventory.listed()
        if not listed:
            return None
        due = await self._state.leases_to_release(self._clock.time())
        recorded = {r.credential_id for r in due}
        wait: float | None = None
        for credential_id in listed:
            if credential_id in recorded or await self._state.get_credential(credential_id):
                continue
            found = await orphans.inventory.inspect(credential_id)
            if found is None:
                continue
            if found.age < orphans.grace + AGE_SLACK_SECONDS:
                remaining = orphans.grace + AGE_SLACK_SECONDS - found.age
                wait = remaining if wait is None else min(wait, remaining)
                continue
            await self._issuer.revoke(credential_id)
            self.orphans_revoked += 1
            log.warning(
                "orphaned Vault credential revoked: Vault created it for a request whose "
                "answer the broker never saw",
                credential=self._issuer.audit_id(credential_id),
                age_seconds=math.floor(found.age),
            )
        return wait

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
