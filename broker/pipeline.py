"""The broker's data flow, in one place.

    authenticate -> build context -> policy decides -> limits -> issuers issue
    -> audit records (durably) -> respond

Fail closed: a credential leaves only after its audit record is on disk. Anything that
fails after issuance (the state store, the audit sink) undoes what was issued: Vault
leases are revoked, tokens are marked revoked, limits are refunded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import structlog

from broker.audit import events
from broker.audit.events import AgentRef
from broker.authn import Authenticator, Presented
from broker.authn.authenticator import presented_identity
from broker.config.settings import Settings
from broker.context.user_token import UserTokenRejected, UserTokenVerifier
from broker.domain import Caller, Credential, Decision, RequestContext, Secret
from broker.errors import (
    BrokerError,
    PolicyDenied,
    RateLimited,
    Unauthenticated,
    Unavailable,
)
from broker.issuers.base import IssueRequest
from broker.policy.reloader import ReloadingPolicy
from broker.state.base import CredentialRecord
from broker.typing import AuditSink, Clock, Issuer, StateStore

__all__ = ["CredentialRequest", "Issued", "Pipeline", "new_id"]

log = structlog.get_logger(__name__)


def new_id() -> str:
    """A random, URL-safe identifier (decision ids)."""
    return secrets.token_urlsafe(16)


@dataclass(frozen=True, slots=True)
class CredentialRequest:
    """A validated `POST /v1/credentials` body."""

    tools: tuple[str, ...]
    ttl_seconds: int | None = None
    user_token: Secret | None = None
    session_id: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Issued:
    """What a successful issuance returns."""

    decision: Decision
    credentials: tuple[Credential, ...]


class Pipeline:
    """Strings the steps together; each step is its own module."""

    def __init__(
        self,
        *,
        settings: Settings,
        clock: Clock,
        authenticator: Authenticator,
        user_tokens: UserTokenVerifier,
        policy: ReloadingPolicy,
        issuers: Mapping[str, Issuer],
        state: StateStore,
        audit: AuditSink,
    ) -> None:
        """Wire the steps."""
        self.settings = settings
        self.clock = clock
        self.authenticator = authenticator
        self.user_tokens = user_tokens
        self.policy = policy
        self.issuers = issuers
        self.state = state
        self.audit = audit

    # -- step 1: who is calling -------------------------------------------------------------

    async def authenticate(
        self, presented: Presented, *, request_id: str, remote: str | None
    ) -> Caller:
        """Authenticate a request and refuse revoked agents; audit failed presented identities.

        Raises:
            Unauthenticated: 401 (audited when an identity was presented).
            Unavailable: The failure could not be audited, or the state store is down.
        """
        try:
            caller = self.authenticator.authenticate(presented)
            if await self.state.agent_revoked(caller.spiffe_id):
                raise Unauthenticated(f"agent {caller.spiffe_id} has been revoked")
        except Unauthenticated as exc:
            if exc.presented:
                spiffe_id, thumbprint, jti = presented_identity(presented)
                await self.audit.write(
                    events.auth_failed(
                        agent=AgentRef(spiffe_id, thumbprint, jti, verified=False),
                        reason=exc.detail,
                        ts=self.clock.now(),
                        request_id=request_id,
                        remote=remote,
                    )
                )
            raise
        return caller

    # -- steps 2 to 6: credentials ----------------------------------------------------------

    async def issue(
        self, caller: Caller, request: CredentialRequest, *, request_id: str, remote: str | None
    ) -> Issued:
        """Decide, issue and audit a credential request (all tools or none).

        Raises:
            PolicyDenied: 403, audited.
            RateLimited: 429, audited.
            Unavailable: 503: a backend or the audit sink failed; nothing was issued.
        """
        decision_id = new_id()
        ctx, rejection = await self._context(caller, request, request_id=request_id, remote=remote)
        decision = (
            self._rejected(decision_id, (rejection.code,), (rejection.message,))
            if rejection is not None
            else self.policy.decide(ctx, decision_id)
        )
        if not decision.allow:
            await self.audit.write(events.denied(ctx, decision))
            raise PolicyDenied(
                decision.messages[0] if decision.messages else "denied by policy",
                decision_id=decision_id,
                reasons=list(decision.reasons),
            )

        now = ctx.now.timestamp()
        limit = await self.state.consume_limits(decision.limits, decision_id, now)
        if not limit.allowed:
            code = "rate_limited" if limit.kind == "rate" else "budget_exhausted"
            refused = dataclasses.replace(
                decision,
                allow=False,
                ttl_granted=0,
                reasons=(code,),
                messages=(f"{code}: {limit.key} (retry in {limit.retry_after} s)",),
            )
            await self.audit.write(events.denied(ctx, refused))
            raise RateLimited(
                f"{'rate limit' if code == 'rate_limited' else 'budget'} reached; "
                f"retry in {limit.retry_after} s",
                retry_after=limit.retry_after,
                decision_id=decision_id,
                reasons=[code],
            )

        credentials: list[Credential] = []
        try:
            for grant in decision.tools:
                tool = self.settings.tool(grant.tool)
                assert tool is not None  # the request parser only admits known tools
                request_for_tool = IssueRequest(ctx, decision, grant, tool, decision.ttl_granted)
                credentials.append(await self.issuers[tool.type].issue(request_for_tool))
            await self.state.put_credentials([self._record(ctx, decision, c) for c in credentials])
            await self.audit.write(events.issued(ctx, decision, credentials))
        except BrokerError as exc:
            await self._undo(credentials)
            with contextlib.suppress(BrokerError):
                await self.state.refund_limits(decision.limits, decision_id, now)
            if not isinstance(exc, Unavailable):
                raise
            with contextlib.suppress(Unavailable):
                await self.audit.write(events.failed(ctx, decision, (exc.reason,), exc.detail))
            raise
        return Issued(decision, tuple(credentials))

    async def _context(
        self, caller: Caller, request: CredentialRequest, *, request_id: str, remote: str | None
    ) -> tuple[RequestContext, UserTokenRejected | None]:
        user, rejection = None, None
        if request.user_token is not None:
            try:
                user = await self.user_tokens.verify(request.user_token.reveal())
            except UserTokenRejected as exc:
                rejection = exc
        ctx = RequestContext(
            caller=caller,
            user=user,
            tools=request.tools,
            ttl_requested=request.ttl_seconds,
            now=self.clock.now(),
            request_id=request_id,
            remote=remote,
            session_id=request.session_id,
            reason=request.reason,
        )
        return ctx, rejection

    def _rejected(
        self, decision_id: str, reasons: tuple[str, ...], messages: tuple[str, ...]
    ) -> Decision:
        policy = self.policy.policy
        return Decision(
            decision_id=decision_id,
            allow=False,
            policy_id=policy.id,
            policy_version=policy.version,
            ttl_granted=0,
            tools=(),
            reasons=reasons,
            messages=messages,
        )

    def _record(
        self, ctx: RequestContext, decision: Decision, credential: Credential
    ) -> CredentialRecord:
        grant = next(g for g in decision.tools if g.tool == credential.tool)
        tool = self.settings.tool(credential.tool)
        return CredentialRecord(
            credential_id=credential.credential_id,
            tool=credential.tool,
            type=credential.type,
            agent=ctx.caller.spiffe_id,
            user=f"{ctx.user.issuer}#{ctx.user.subject}" if ctx.user else None,
            decision_id=decision.decision_id,
            issued_at=ctx.now.timestamp(),
            expires_at=credential.expires_at.timestamp(),
            lease_id=credential.credential_id if credential.type == "vault" else None,
            scope=" ".join(grant.scopes),
            audience=tool.audience if tool else None,
        )

    async def _undo(self, credentials: Sequence[Credential]) -> None:
        """Revoke what was issued for a request that cannot complete."""
        for credential in credentials:
            try:
                await self.issuers[credential.type].revoke(credential.credential_id)
            except BrokerError:
                log.warning(
                    "could not revoke at the issuer; the reconciler will retry",
                    credential_id=credential.audit_id,
                )
            with contextlib.suppress(BrokerError):
                await self.state.revoke_credential(credential.credential_id)
