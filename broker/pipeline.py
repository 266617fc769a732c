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
from broker.context.user_token import UserTokenRejected, UserTokenVerifier, actors_of
from broker.domain import Caller, Credential, Decision, RequestContext, Secret, UserContext
from broker.errors import (
    BrokerError,
    OAuthError,
    PolicyDenied,
    RateLimited,
    Unauthenticated,
    Unavailable,
)
from broker.issuers.base import IssueRequest
from broker.issuers.jwt import JwtIssuer
from broker.jose import JoseError, unverified_claims
from broker.lifecycle import release_at_issuer
from broker.metrics import Metrics
from broker.policy.reloader import ReloadingPolicy
from broker.state.base import CredentialRecord
from broker.typing import AuditSink, Clock, Issuer, StateStore

__all__ = ["CredentialRequest", "ExchangeRequest", "Issued", "Pipeline", "new_id"]

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
class ExchangeRequest:
    """A validated RFC 8693 token exchange (`POST /v1/token`)."""

    subject_token: Secret
    tool: str
    scopes: tuple[str, ...] | None = None
    actor_token: Secret | None = None


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
        jwt_issuer: JwtIssuer | None = None,
        metrics: Metrics | None = None,
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
        self.jwt_issuer = jwt_issuer
        self.metrics = metrics or Metrics()

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
            if presented.authorization and self.settings.state.jwt_svid_replay_protection:
                await self._check_replay(caller)
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

    async def _check_replay(self, caller: Caller) -> None:
        """With replay protection on, each JWT-SVID authenticates one request only."""
        if caller.jwt_svid_jti is None:
            raise Unauthenticated("JWT-SVID has no 'jti': replay protection requires one")
        leeway = self.settings.authentication.jwt_svid.leeway_seconds
        key = f"jwt-svid|{caller.spiffe_id}|{caller.jwt_svid_jti}"
        if not await self.state.first_use(key, caller.expires_at.timestamp() + leeway):
            raise Unauthenticated("JWT-SVID was already used (replay protection is on)")

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
        ctx, rejection = await self._context(caller, request, request_id=request_id, remote=remote)
        return await self._decide_and_issue(ctx, rejection)

    async def exchange(
        self, caller: Caller, request: ExchangeRequest, *, request_id: str, remote: str | None
    ) -> Issued:
        """RFC 8693 token exchange: a user token, or a broker token to narrow, for one tool.

        Raises:
            OAuthError: Malformed exchange (actor mismatch, scope wider than the subject's,
                another tool than the subject token's).
            PolicyDenied, RateLimited, Unavailable: As for `issue`.
        """
        if request.actor_token is not None:
            actor = self.authenticator.jwt_verifier.verify(request.actor_token.reveal())
            if actor.spiffe_id != caller.spiffe_id:
                raise OAuthError(
                    "invalid_request",
                    f"actor_token names {actor.spiffe_id}, not the authenticated agent",
                )
        token = request.subject_token.reveal()
        if self._is_broker_token(token):
            ctx, rejection = await self._delegated_context(
                caller, token, request, request_id=request_id, remote=remote
            )
        else:
            ctx, rejection = await self._context(
                caller,
                CredentialRequest(
                    tools=(request.tool,),
                    user_token=request.subject_token,
                    reason="token exchange (RFC 8693)",
                ),
                request_id=request_id,
                remote=remote,
            )
            ctx = dataclasses.replace(ctx, scopes=request.scopes)
        return await self._decide_and_issue(ctx, rejection)

    def _is_broker_token(self, token: str) -> bool:
        try:
            return unverified_claims(token).get("iss") == self.settings.issuer_url
        except JoseError:
            return False

    async def _delegated_context(
        self,
        caller: Caller,
        token: str,
        request: ExchangeRequest,
        *,
        request_id: str,
        remote: str | None,
    ) -> tuple[RequestContext, UserTokenRejected | None]:
        """The context of narrowing a broker-issued token for a sub-agent."""
        now = self.clock.now()
        claims = self.jwt_issuer.verify(token) if self.jwt_issuer is not None else None
        record = await self.state.get_credential(str(claims["jti"])) if claims else None
        rejection = None
        if claims is None or record is None:
            rejection = UserTokenRejected(
                "subject_token_invalid", "subject_token is not a live credential of this broker"
            )
        elif record.revoked or await self.state.agent_revoked(record.agent):
            rejection = UserTokenRejected("subject_token_revoked", "subject_token has been revoked")
        elif record.tool != request.tool:
            raise OAuthError(
                "invalid_target",
                f"a delegated token can only be narrowed for its own tool ({record.tool})",
            )
        original = set(str(claims.get("scope", "")).split()) if claims else set()
        if request.scopes is not None and not set(request.scopes) <= original:
            raise OAuthError("invalid_scope", "requested scope is wider than the subject_token's")
        user = None
        if record is not None and record.user is not None and claims is not None:
            issuer, _, subject = record.user.partition("#")
            user = UserContext(
                issuer=issuer,
                subject=subject,
                expires_at=float(str(claims["exp"])),
                tier=record.user_tier,
                groups=record.user_groups,
            )
        ctx = RequestContext(
            caller=caller,
            user=user,
            tools=(request.tool,),
            ttl_requested=None,
            now=now,
            request_id=request_id,
            remote=remote,
            reason="token exchange (RFC 8693), delegated",
            scopes=request.scopes if request.scopes is not None else tuple(sorted(original)),
            actors=actors_of(claims.get("act")) if claims else (),
            not_after=float(str(claims["exp"])) if claims else None,
        )
        return ctx, rejection

    async def _decide_and_issue(
        self, ctx: RequestContext, rejection: UserTokenRejected | None
    ) -> Issued:
        decision_id = new_id()
        decision = (
            self.policy.engine.deny(decision_id, (rejection.code,), (rejection.message,))
            if rejection is not None
            else self.policy.decide(ctx, decision_id)
        )
        self.metrics.decision(decision)
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
            self.metrics.decision(refused)
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
        self.metrics.issued(credentials)
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
            actors=user.actors if user is not None else (),
        )
        return ctx, rejection

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
            user_tier=ctx.user.tier if ctx.user else None,
            user_groups=ctx.user.groups if ctx.user else (),
        )

    async def _undo(self, credentials: Sequence[Credential]) -> None:
        """Revoke what was issued for a request that cannot complete."""
        for credential in credentials:
            with contextlib.suppress(BrokerError):
                await self.state.revoke_credential(credential.credential_id)
            issuer = self.issuers.get(credential.type)
            if not await release_at_issuer(issuer, self.state, credential.credential_id):
                log.warning(
                    "could not revoke at the issuer; the reconciler will retry",
                    credential_id=credential.audit_id,
                )
