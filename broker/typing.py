"""Every extension point of the broker, as one `Protocol` each, in one module.

Implementations live in sibling modules under a folder named for the Protocol
(`broker/identity/files.py`, `broker/identity/workload_api.py`, ...). Shared contract
test suites in `tests/` run against every implementation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from broker.audit.events import AuditEvent
    from broker.domain import Credential, Decision, LimitCheck, RequestContext
    from broker.identity.material import IdentitySnapshot
    from broker.issuers.base import IssueRequest
    from broker.state.base import CredentialRecord, LimitResult

__all__ = [
    "AuditSink",
    "Clock",
    "IdentitySource",
    "Issuer",
    "PolicyDecider",
    "SnapshotListener",
    "StateStore",
]

SnapshotListener = Callable[["IdentitySnapshot"], None]


class Clock(Protocol):
    """The wall clock. Injected everywhere time matters; tests use a manual clock."""

    def now(self) -> datetime:
        """Return the current time as an aware UTC datetime."""
        ...

    def time(self) -> float:
        """Return the current time as seconds since the epoch."""
        ...


class IdentitySource(Protocol):
    """Supplies the broker's own X.509-SVID and the trust bundles, and their rotations."""

    async def start(self) -> None:
        """Load the first material; returns once it is available.

        Raises:
            IdentityError: No usable material could be obtained.
        """
        ...

    async def close(self) -> None:
        """Stop watching for updates and release resources."""
        ...

    def snapshot(self) -> IdentitySnapshot:
        """Return the current material.

        Raises:
            IdentityError: The source has no usable material.
        """
        ...

    def ready(self) -> bool:
        """Whether current, unexpired material is loaded."""
        ...

    def subscribe(self, listener: SnapshotListener) -> None:
        """Call `listener` on the event loop with each new snapshot (after a rotation)."""
        ...

    async def fetch_jwt_svid(self, audience: str) -> str:
        """Return a JWT-SVID of the broker for `audience` (used to log in to Vault).

        Raises:
            IdentityError: The source cannot mint JWT-SVIDs.
        """
        ...


class PolicyDecider(Protocol):
    """Decides requests (default deny)."""

    def decide(self, ctx: RequestContext, decision_id: str) -> Decision:
        """Decide a request.

        Args:
            ctx: Who asks, for whom, for which tools, for how long.
            decision_id: The id the decision carries.

        Returns:
            The decision, with every reason and the policy id and version.
        """
        ...


class Issuer(Protocol):
    """Issues credentials of one type (`jwt`, `vault`)."""

    kind: str

    async def issue(self, request: IssueRequest) -> Credential:
        """Issue one credential.

        Raises:
            Unavailable: The backing system cannot issue now (nothing was issued).
        """
        ...

    async def revoke(self, credential_id: str) -> None:
        """Undo a credential at its source (a no-op for self-contained JWTs)."""
        ...


class StateStore(Protocol):
    """Shared, self-expiring state: issued credentials, revocations, limits, seen ids."""

    async def start(self) -> None:
        """Connect and prepare (schema, scripts)."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...

    async def ping(self) -> bool:
        """Whether the store answers (readiness)."""
        ...

    async def put_credentials(self, records: Sequence[CredentialRecord]) -> None:
        """Remember issued credentials until they expire."""
        ...

    async def get_credential(self, credential_id: str) -> CredentialRecord | None:
        """A credential that has not expired, or None."""
        ...

    async def revoke_credential(self, credential_id: str) -> CredentialRecord | None:
        """Mark a live credential revoked; returns it, or None if unknown or expired."""
        ...

    async def agent_credentials(self, agent: str) -> list[CredentialRecord]:
        """The live credentials of an agent."""
        ...

    async def revoke_agent(self, agent: str, until: float) -> None:
        """Refuse an agent until `until` (epoch seconds)."""
        ...

    async def agent_revoked(self, agent: str) -> bool:
        """Whether an agent is currently revoked."""
        ...

    async def consume_limits(
        self, checks: Sequence[LimitCheck], member: str, now: float
    ) -> LimitResult:
        """Atomically consume every limit, or none if any would be exceeded."""
        ...

    async def refund_limits(self, checks: Sequence[LimitCheck], member: str, now: float) -> None:
        """Give back what `consume_limits` took for `member` (issuance failed)."""
        ...

    async def first_use(self, key: str, until: float) -> bool:
        """Record `key` until `until`; False if it was already recorded (replay)."""
        ...

    async def leases_to_release(self, now: float) -> list[CredentialRecord]:
        """Credentials holding a Vault lease that is expired or revoked but not released."""
        ...

    async def lease_released(self, credential_id: str) -> None:
        """Forget a Vault lease once Vault has revoked it."""
        ...


class AuditSink(Protocol):
    """Where audit records go; a record is durable when `write` returns."""

    async def start(self) -> None:
        """Open the sink (an unwritable sink starts unhealthy rather than failing)."""
        ...

    async def close(self) -> None:
        """Flush and close."""
        ...

    def ready(self) -> bool:
        """Whether the sink is currently writing successfully."""
        ...

    async def write(self, event: AuditEvent) -> None:
        """Append one record, durably.

        Raises:
            Unavailable: It could not be written in time; the caller must not issue.
        """
        ...
