"""Every extension point of the broker, as one `Protocol` each, in one module.

Implementations live in sibling modules under a folder named for the Protocol
(`broker/identity/files.py`, `broker/state/redis/`, `broker/issuers/vault/`, ...), and
one contract suite per Protocol in `tests/contracts/` runs against every implementation.

The failure contract: every I/O method raises `broker.errors.Unavailable` (or a subclass)
when its backend fails, never the backend library's own exceptions. The pipeline's
fail-closed path (undo, refund, `credential.failed`, 503) relies on exactly that.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from broker.audit.events import AuditEvent
    from broker.authn.authenticator import Presented
    from broker.domain import Caller, Credential, Decision, LimitCheck, RequestContext, Secret
    from broker.identity.material import IdentitySnapshot, PublicKey
    from broker.issuers.base import IssueRequest
    from broker.state.base import ApprovalRecord, CredentialRecord, LimitResult

__all__ = [
    "AuditSink",
    "Authenticator",
    "Clock",
    "IdentitySource",
    "Issuer",
    "KeySet",
    "KeySource",
    "PolicyDecider",
    "SnapshotListener",
    "StateStore",
    "TokenVerifier",
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

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` of this clock's time (background loops sleep through it)."""
        ...


class IdentitySource(Protocol):
    """Supplies the broker's own X.509-SVID and the trust bundles, and their rotations."""

    async def start(self) -> None:
        """Load the first material; returns once it is available.

        Raises:
            IdentityError: (an `Unavailable`) No usable material could be obtained.
        """
        ...

    async def close(self) -> None:
        """Stop watching for updates and release resources."""
        ...

    def snapshot(self) -> IdentitySnapshot:
        """Return the current material.

        Raises:
            IdentityError: (an `Unavailable`) The source has no usable material.
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
            IdentityError: (an `Unavailable`) The source cannot mint JWT-SVIDs now.
        """
        ...


class Authenticator(Protocol):
    """Turns what a request presented into an authenticated workload."""

    def authenticate(self, presented: Presented) -> Caller:
        """Verify the presented SVID (X.509 over mTLS, or a JWT-SVID bearer).

        Raises:
            Unauthenticated: Nothing presented, or what was presented does not verify.
        """
        ...

    def verify_jwt_svid(self, token: str) -> Caller:
        """Verify a JWT-SVID on its own (RFC 8693 `actor_token`).

        Raises:
            Unauthenticated: The token is not a valid JWT-SVID for this broker.
        """
        ...


class KeySet(Protocol):
    """Public keys that verify someone else's JWTs (an identity provider's JWKS)."""

    async def start(self) -> None:
        """Load the first keys (a source that cannot load yet keeps trying)."""
        ...

    async def close(self) -> None:
        """Stop refreshing."""
        ...

    async def keys(self, kid: str | None) -> Mapping[str, PublicKey]:
        """The keys by `kid` (refreshed, within limits, when `kid` is unknown).

        Raises:
            Unavailable: No keys could be loaded at all.
        """
        ...


class TokenVerifier(Protocol):
    """Verifies the broker's own tokens and publishes what resource servers need."""

    @property
    def issuer(self) -> str:
        """The `iss` of the broker's tokens."""
        ...

    @property
    def algorithms(self) -> tuple[str, ...]:
        """The signing algorithms in use (for the authorization server metadata)."""
        ...

    def verify(self, token: str) -> Mapping[str, object] | None:
        """The claims of a valid, unexpired token of this broker; None for anything else.

        Revocation is not checked here (it lives in the state store).
        """
        ...

    def jwks(self) -> Mapping[str, object]:
        """The public keys (JWKS document): upcoming, current and recently retired."""
        ...


class PolicyDecider(Protocol):
    """Decides requests (default deny). May be local (the rule engine) or remote."""

    @property
    def version(self) -> tuple[str, str]:
        """The running policy's id and version (declared version plus content hash)."""
        ...

    async def decide(self, ctx: RequestContext, decision_id: str) -> Decision:
        """Decide a request: all tools allowed, or a denial with every reason.

        Args:
            ctx: Who asks, for whom, for which tools, for how long.
            decision_id: The id the decision carries.

        Raises:
            Unavailable: A remote engine cannot answer (the request is not issued).
        """
        ...

    def deny(self, decision_id: str, reasons: Sequence[str], messages: Sequence[str]) -> Decision:
        """A denial under the running policy, for refusals decided before the rules run."""
        ...


class Issuer(Protocol):
    """Issues credentials of one kind (`jwt`, `vault`, ...)."""

    kind: str

    async def issue(self, request: IssueRequest) -> Credential:
        """Issue one credential.

        Raises:
            Unavailable: The backing system cannot issue now (nothing is left behind).
        """
        ...

    def audit_id(self, credential_id: str) -> str:
        """What the audit trail records for a credential id (an HMAC where it is secret)."""
        ...

    async def revoke(self, credential_id: str) -> None:
        """Undo a credential at its source (a no-op for self-contained JWTs).

        Raises:
            Unavailable: The backing system cannot be reached (the reconciler retries).
        """
        ...


class StateStore(Protocol):
    """Shared, self-expiring state: credentials, revocations, limits, seen ids, approvals.

    Every method but `start`, `close` and `ping` raises `Unavailable` when the backend
    fails. Pending human approvals (CONTRACT section 8) are here so that any replica
    sharing the store can answer for any approval.
    """

    async def start(self) -> None:
        """Connect and prepare (schema, scripts).

        Raises:
            Unavailable: The backend cannot be reached or prepared.
        """
        ...

    async def close(self) -> None:
        """Release connections."""
        ...

    async def ping(self) -> bool:
        """Whether the store answers (readiness); never raises."""
        ...

    async def put_credentials(self, records: Sequence[CredentialRecord]) -> None:
        """Remember issued credentials until they expire.

        Raises:
            Unavailable: Not remembered.
        """
        ...

    async def get_credential(self, credential_id: str) -> CredentialRecord | None:
        """A credential that has not expired, or None.

        Raises:
            Unavailable: The backend failed.
        """
        ...

    async def revoke_credential(self, credential_id: str) -> CredentialRecord | None:
        """Mark a live credential revoked; returns it, or None if unknown or expired.

        Raises:
            Unavailable: Not revoked.
        """
        ...

    async def agent_credentials(self, agent: str) -> list[CredentialRecord]:
        """The live credentials of an agent.

        Raises:
            Unavailable: The backend failed.
        """
        ...

    async def revoke_agent(self, agent: str, until: float) -> None:
        """Refuse an agent until `until` (epoch seconds).

        Raises:
            Unavailable: Not revoked.
        """
        ...

    async def agent_revoked(self, agent: str) -> bool:
        """Whether an agent is currently revoked.

        Raises:
            Unavailable: Unknown (the caller must refuse, not assume "no").
        """
        ...

    async def consume_limits(
        self, checks: Sequence[LimitCheck], member: str, now: float
    ) -> LimitResult:
        """Atomically consume every limit, or none if any would be exceeded.

        Raises:
            Unavailable: Nothing was consumed.
        """
        ...

    async def refund_limits(self, checks: Sequence[LimitCheck], member: str, now: float) -> None:
        """Give back what `consume_limits` took for `member` (issuance failed).

        Raises:
            Unavailable: The backend failed.
        """
        ...

    async def first_use(self, key: str, until: float) -> bool:
        """Record `key` until `until`; False if it was already recorded (replay).

        Raises:
            Unavailable: Unknown (the caller must refuse).
        """
        ...

    async def leases_to_release(self, now: float) -> list[CredentialRecord]:
        """Credentials holding a backend lease that is expired or revoked but not released.

        Raises:
            Unavailable: The backend failed.
        """
        ...

    async def lease_released(self, credential_id: str) -> None:
        """Forget a lease once its issuer has revoked it.

        Raises:
            Unavailable: The backend failed.
        """
        ...

    async def put_approval(self, record: ApprovalRecord) -> None:
        """Remember a new pending approval.

        Raises:
            Unavailable: Not remembered.
        """
        ...

    async def get_approval(self, approval_id: str) -> ApprovalRecord | None:
        """An approval, or None if unknown or forgotten.

        A record is remembered until a day after it lapses (`APPROVAL_MEMORY_SECONDS`
        after its `expires_at`), whatever its status, so that a late poll is answered 410
        rather than 404.

        Raises:
            Unavailable: The backend failed.
        """
        ...

    async def set_approval_status(
        self,
        approval_id: str,
        *,
        expected: str,
        status: str,
        approver: str | None = None,
        reason: str | None = None,
    ) -> ApprovalRecord | None:
        """Atomically move an approval from `expected` to `status` (compare-and-set).

        Atomic across every process sharing the store: of concurrent moves from the same
        `expected`, exactly one succeeds. The record keeps its expiry; `approver` and
        `reason` are kept unchanged when None.

        Returns:
            The updated record, or None when it is unknown or not in `expected` (so that
            approving, denying, expiring and collecting each happen at most once).

        Raises:
            Unavailable: The backend failed (nothing changed).
        """
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


class KeySource(Protocol):
    """Where the gateway reads an upstream's real key (Vault/OpenBao KV, a file)."""

    async def start(self) -> None:
        """Prepare the source (an unreachable backend only fails the first `key`)."""
        ...

    async def close(self) -> None:
        """Release what the source holds."""
        ...

    async def key(self) -> Secret:
        """The current key, possibly cached for the source's bounded TTL.

        Raises:
            Unavailable: The key cannot be read now (nothing is forwarded).
        """
        ...
