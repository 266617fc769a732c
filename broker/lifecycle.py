"""After issuance: introspection (RFC 7662), revocation of credentials and of agents.

Who may do what:
- introspect a token: its owner agent, an admin, or a configured resource server;
  anyone else learns only `{"active": false}`, like for an expired, revoked or unknown token;
- revoke a credential: its owner agent or an admin;
- revoke an agent: an admin. The agent's next request is refused on every replica (the
  revocation lives in the shared state store), and each of its live credentials is
  revoked: introspection says inactive, and Vault leases are revoked in Vault.
Every revocation is audited; the revocation itself is done first, so a failing audit sink
can delay the answer but never leave a credential alive.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from broker.audit import LeaseHasher, events
from broker.audit.events import CredentialRef, iso
from broker.config.settings import Settings
from broker.domain import Caller
from broker.errors import BadRequest, BrokerError, Forbidden, NotFound
from broker.issuers.jwt import JwtIssuer
from broker.spiffe_id import parse_spiffe_id
from broker.state.base import CredentialRecord
from broker.typing import AuditSink, Clock, Issuer, StateStore

__all__ = ["AgentRevocation", "Lifecycle", "release_at_issuer"]

log = structlog.get_logger(__name__)

INACTIVE: dict[str, object] = {"active": False}


async def release_at_issuer(issuer: Issuer | None, state: StateStore, credential_id: str) -> bool:
    """Revoke a credential at its issuer (a Vault lease) and mark its lease released.

    Returns:
        False if the issuer could not be reached (the reconciler retries later).
    """
    if issuer is None:
        return True
    try:
        await issuer.revoke(credential_id)
    except BrokerError:
        return False
    with contextlib.suppress(BrokerError):
        await state.lease_released(credential_id)
    return True


@dataclass(frozen=True, slots=True)
class AgentRevocation:
    """What revoking an agent did."""

    spiffe_id: str
    until: datetime
    credentials: tuple[CredentialRecord, ...]


class Lifecycle:
    """Introspection and revocation."""

    def __init__(
        self,
        *,
        settings: Settings,
        clock: Clock,
        state: StateStore,
        audit: AuditSink,
        issuers: Mapping[str, Issuer],
        jwt_issuer: JwtIssuer | None,
        lease_hasher: LeaseHasher,
    ) -> None:
        """Wire the parts."""
        self._settings = settings
        self._clock = clock
        self._state = state
        self._audit = audit
        self._issuers = issuers
        self._jwt = jwt_issuer
        self._hash = lease_hasher

    def is_admin(self, caller: Caller) -> bool:
        """Whether the caller is a configured administrator."""
        return caller.spiffe_id in self._settings.admins

    async def introspect(self, caller: Caller, token: str) -> dict[str, object]:
        """RFC 7662: the token's claims if active and the caller may know, else inactive."""
        claims = self._jwt.verify(token) if self._jwt is not None else None
        if claims is None:
            return INACTIVE
        record = await self._state.get_credential(str(claims["jti"]))
        if record is None or record.revoked or await self._state.agent_revoked(record.agent):
            return INACTIVE
        allowed = (
            caller.spiffe_id == record.agent
            or self.is_admin(caller)
            or caller.spiffe_id in self._settings.resource_servers
        )
        if not allowed:
            return INACTIVE
        body: dict[str, object] = {"active": True, "token_type": "Bearer"}
        for name in (
            "iss",
            "sub",
            "aud",
            "client_id",
            "scope",
            "exp",
            "iat",
            "nbf",
            "jti",
            "act",
            "tool",
            "cnf",
        ):
            if name in claims:
                body[name] = claims[name]
        return body

    def _ref(self, record: CredentialRecord) -> CredentialRef:
        audit_id = (
            self._hash(record.credential_id) if record.type == "vault" else record.credential_id
        )
        expires = iso(datetime.fromtimestamp(record.expires_at, UTC))
        return CredentialRef(record.tool, record.type, audit_id, expires)

    async def _release(self, record: CredentialRecord) -> None:
        """Revoke at the issuer (a Vault lease); the reconciler retries what fails here."""
        if record.lease_id is None:
            return
        if not await release_at_issuer(
            self._issuers.get(record.type), self._state, record.credential_id
        ):
            log.warning(
                "lease revocation deferred to the reconciler",
                credential=self._hash(record.credential_id),
            )

    async def revoke(
        self, caller: Caller, credential_id: str, *, request_id: str, remote: str | None
    ) -> CredentialRecord:
        """Revoke one credential (owner or admin).

        Raises:
            NotFound: No live credential with that id.
            Forbidden: The caller is neither its owner nor an admin.
            Unavailable: The state store or the audit sink failed.
        """
        record = await self._state.get_credential(credential_id)
        if record is None:
            raise NotFound("no live credential has that id")
        if record.agent != caller.spiffe_id and not self.is_admin(caller):
            raise Forbidden("only the credential's owner agent or an administrator may revoke it")
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
                cause="owner_revocation"
                if caller.spiffe_id == record.agent
                else "admin_revocation",
            )
        )
        return revoked

    async def revoke_agent(
        self, caller: Caller, spiffe_id: str, *, request_id: str, remote: str | None
    ) -> AgentRevocation:
        """Revoke an agent and every live credential it holds (admins only).

        Raises:
            Forbidden: The caller is not an admin.
            BadRequest: Not a workload SPIFFE ID, or the admin's own.
            Unavailable: The state store or the audit sink failed.
        """
        if not self.is_admin(caller):
            raise Forbidden("only an administrator may revoke agents")
        try:
            spiffe_id = str(parse_spiffe_id(spiffe_id))
        except ValueError as exc:
            raise BadRequest(f"'spiffe_id': {exc}") from None
        if spiffe_id == caller.spiffe_id:
            raise BadRequest("an administrator cannot revoke its own SPIFFE ID")
        until = self._clock.time() + self._settings.state.agent_revocation_seconds
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
