"""Revocation of credentials (owner or admin) and of agents (admin).

Revoking an agent refuses its next request on every replica (the revocation lives in the
shared state store) and revokes each of its live credentials: introspection says
inactive, and leases are revoked at their issuer. Every revocation is audited; the
revocation itself is done first, so a failing audit sink can delay the answer but never
leave a credential alive.

A credential the caller may not revoke and one that does not exist are the same to the
caller (no oracle on live credential ids); the audit trail tells them apart: each refusal
is a `credential.revoke_refused` record, written alike in both cases so that neither
answer is slower than the other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from broker.audit import events
from broker.audit.events import AuditEvent, CredentialRef
from broker.clock import rfc3339
from broker.domain import Caller
from broker.errors import BadRequest, Forbidden
from broker.lifecycle.release import release_at_issuer
from broker.spiffe_id import parse_spiffe_id
from broker.state.base import CredentialRecord
from broker.typing import AuditSink, Clock, Issuer, StateStore, TokenVerifier

__all__ = ["AgentRevocation", "Revocation"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class AgentRevocation:
    """What revoking an agent did."""

    spiffe_id: str
    until: datetime
    credentials: tuple[CredentialRecord, ...]


class Revocation:
    """Revokes credentials and agents, and audits it."""

    def __init__(
        self,
        *,
        clock: Clock,
        state: StateStore,
        audit: AuditSink,
        issuers: Mapping[str, Issuer],
        verifier: TokenVerifier | None,
        admins: frozenset[str],
        agent_revocation_seconds: int,
    ) -> None:
        """Wire the parts."""
        self._clock = clock
        self._state = state
        self._audit = audit
        self._issuers = issuers
        self._verifier = verifier
        self._admins = admins
        self._agent_revocation_seconds = agent_revocation_seconds

    def credential_id_of(self, token: str) -> str | None:
        """The `jti` of a valid token of this broker (RFC 7009), else None."""
        claims = self._verifier.verify(token) if self._verifier is not None else None
        return None if claims is None else str(claims["jti"])

    def _ref(self, record: CredentialRecord) -> CredentialRef:
        issuer = self._issuers.get(record.type)
        audit_id = issuer.audit_id(record.credential_id) if issuer else record.credential_id
        return CredentialRef(record.tool, record.type, audit_id, rfc3339(record.expires_at))

    async def _release(self, record: CredentialRecord) -> None:
        """Revoke at the issuer (a lease); the reconciler retries what fails here."""
        if record.lease_id is None:
            return
        issuer = self._issuers.get(record.type)
        if not await release_at_issuer(issuer, self._state, record.credential_id):
            log.warning(
                "lease revocation deferred to the reconciler",
                credential=self._ref(record).credential_id,
            )

    async def revoke(
        self, caller: Caller, credential_id: str, *, request_id: str, remote: str | None
    ) -> CredentialRecord | None:
        """Revoke one credential (owner or admin).

        Returns:
            The revoked credential; None when there is none the caller may revoke (unknown,
            expired, or another agent's: audited as `credential.revoke_refused`).

        Raises:
            Unavailable: The state store or the audit sink failed.
        """
        record = await self._state.get_credential(credential_id)
        owner = record is not None and caller.spiffe_id == record.agent
        if record is None or (not owner and caller.spiffe_id not in self._admins):
            await self._audit.write(self._refused(caller, record, request_id, remote))
            return None
        revoked = await self._state.revoke_credential(credential_id) or record
        await self._release(revoked)
        await self._audit.write(
            events.credential_revoked(
                actor=caller,
                credential=self._ref(revoked),
                owner=revoked.agent,
                ts=self._clock.now(),
                request_id=request_id,
                remote=remote,
                cause="owner_revocation" if owner else "admin_revocation",
            )
        )
        return revoked

    def _refused(
        self,
        caller: Caller,
        record: CredentialRecord | None,
        request_id: str,
        remote: str | None,
    ) -> AuditEvent:
        """The `credential.revoke_refused` record of a refused revocation."""
        return events.revoke_refused(
            actor=caller,
            credential=self._ref(record) if record is not None else None,
            owner=record.agent if record is not None else None,
            ts=self._clock.now(),
            request_id=request_id,
            remote=remote,
        )

    async def revoke_agent(
        self, caller: Caller, spiffe_id: str, *, request_id: str, remote: str | None
    ) -> AgentRevocation:
        """Revoke an agent and every live credential it holds (admins only).

        Raises:
            Forbidden: The caller is not an admin.
            BadRequest: Not a workload SPIFFE ID, or the admin's own.
            Unavailable: The state store or the audit sink failed.
        """
        if caller.spiffe_id not in self._admins:
            raise Forbidden("only an administrator may revoke agents")
        try:
            spiffe_id = str(parse_spiffe_id(spiffe_id))
        except ValueError as exc:
            raise BadRequest(f"'spiffe_id': {exc}") from None
        if spiffe_id == caller.spiffe_id:
            raise BadRequest("an administrator cannot revoke its own SPIFFE ID")
        until = self._clock.time() + self._agent_revocation_seconds
        await self._state.revoke_agent(spiffe_id, until)
        revoked: list[CredentialRecord] = []
        for record in await self._state.agent_credentials(spiffe_id):
            current = await self._state.revoke_credential(record.credential_id) or record
            await self._release(current)
            revoked.append(current)
        result = AgentRevocation(spiffe_id, datetime.fromtimestamp(until, UTC), tuple(revoked))
        await self._audit.write(
            events.agent_revoked(
                actor=caller,
                spiffe_id=spiffe_id,
                until=result.until,
                credentials=tuple(self._ref(r) for r in revoked),
                ts=self._clock.now(),
                request_id=request_id,
                remote=remote,
            )
        )
        log.warning(
            "agent revoked", spiffe_id=spiffe_id, by=caller.spiffe_id, credentials=len(revoked)
        )
        return result
