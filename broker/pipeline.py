"""The broker's data flow, in one place.

    authenticate -> build context -> policy decides -> limits -> issuers issue
    -> persist -> audit records (durably) -> respond

Fail closed: a credential leaves only after its audit record is on disk. Anything that
fails after issuance (the state store, the audit sink) undoes what was issued: leases
are revoked at their issuer, tokens are marked revoked, limits are refunded, and the
failure itself is audited (`credential.failed`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import structlog

from broker.audit import events
from broker.audit.aggregate import UnparsedFailures
from broker.audit.events import AgentRef
from broker.authn import Presented
from broker.authn.authenticator import presented_identity
from broker.config.settings import ToolSettings
from broker.context.builder import ContextBuilder
from broker.context.requests import CredentialRequest, ExchangeRequest
from broker.context.user_token import UserTokenRejected
from broker.domain import Caller, Credential, Decision, RequestContext
from broker.errors import (
    BrokerError,
    OAuthError,
    PolicyDenied,
    RateLimited,
    Unauthenticated,
    Unavailable,
)
from broker.issuers.base import IssueRequest
from broker.lifecycle.release import release_at_issuer
from broker.limits import Consumed, Limits
from broker.metrics import Metrics
from broker.state.base import CredentialRecord
from broker.tracing import Tracer
from broker.typing import AuditSink, Authenticator, Clock, Issuer, PolicyDecider, StateStore

__all__ = ["CredentialRequest", "ExchangeRequest", "Issued", "Pipeline", "ReplayGuard", "new_id"]

log = structlog.get_logger(__name__)


def new_id() -> str:
    """A random, URL-safe identifier (decision ids)."""
    return secrets.token_urlsafe(16)


@dataclass(frozen=True, slots=True)
class Issued:
    """What a successful issuance returns."""

    decision: Decision
    credentials: tuple[Credential, ...]


@dataclass(frozen=True, slots=True)
class ReplayGuard:
    """JWT-SVID replay protection: each `jti` authenticates one request (when enabled)."""

    enabled: bool = False
    leeway_seconds: int = 0


class Pipeline:
    """Strings the steps together; each step is its own module."""

    def __init__(
        self,
        *,
        clock: Clock,
        authenticator: Authenticator,
        context: ContextBuilder,
        policy: PolicyDecider,
        limits: Limits,
        issuers: Mapping[str, Issuer],
        tools: Mapping[str, ToolSettings],
        state: StateStore,
        audit: AuditSink,
        replay: ReplayGuard | None = None,
        metrics: Metrics | None = None,
        tracer: Tracer | None = None,
        unparsed: UnparsedFailures | None = None,
    ) -> None:
        """Wire the steps.

        Args:
            clock: The clock.
            authenticator: Step 1, who is calling.
            context: Step 2, for whom and what.
            policy: Step 3, the decision.
            limits: Step 4, rate limits and budgets.
            issuers: Step 5, issuers by kind.
            tools: The tool catalogue, by name (each names its issuer kind).
            state: Where issued credentials are remembered.
            audit: Where every decision is recorded first.
            replay: JWT-SVID replay protection.
            metrics: Counters and per-step latency histograms.
            tracer: A span per step (a no-op unless tracing is configured).
            unparsed: Where failures that claim no identity are counted (see
                `broker.audit.aggregate`).
        """
        self.clock = clock
        self.authenticator = authenticator
        self.context = context
        self.policy = policy
        self.limits = limits
        self.issuers = issuers
        self.tools = tools
        self.state = state
        self.audit = audit
        self.replay = replay or ReplayGuard()
        self.metrics = metrics or Metrics()
        self.tracer = tracer or Tracer(None)
        self.unparsed = unparsed or UnparsedFailures(audit, clock)

    @contextlib.contextmanager
    def _stage(self, name: str) -> Iterator[None]:
        """Time one step (histogram `broker_stage_duration_seconds`) in a span of its own."""
        started = time.perf_counter()
        try:
            with self.tracer.span(name):
                yield
        finally:
            self.metrics.stage(name, time.perf_counter() - started)

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
            with self._stage("authn"):
                caller = self.authenticator.authenticate(presented)
                if await self.state.agent_revoked(caller.spiffe_id):
                    raise Unauthenticated(f"agent {caller.spiffe_id} has been revoked")
                if presented.authorization and self.replay.enabled:
                    await self._check_replay(caller)
        except Unauthenticated as exc:
            if exc.presented:
                spiffe_id, thumbprint, jti = presented_identity(presented)
                if spiffe_id is None and thumbprint is None and jti is None:
                    # Garbage that claims no identity: counted, audited in aggregate.
                    self.unparsed.add(exc.detail[:200], remote)
                    self.metrics.auth_failures_aggregated.inc()
                    raise
                await self.audit.write(
                    events.auth_failed(
                        agent=AgentRef(spiffe_id, thumbprint, jti, verified=False),
                        reason=exc.detail,
                        ts=self.clock.now(),
                        request_id=request_id,
                        remote=remote,
                        trace_id=self.tracer.trace_id(),
                    )
                )
            raise
        return caller

    async def check_client_id(
        self, caller: Caller, client_id: str | None, *, request_id: str, remote: str | None
    ) -> None:
        """RFC 8705 section 2: a `client_id` must name the authenticated client.

        With certificate (or JWT-SVID) client authentication the SVID's subject is the
        client; a `client_id` naming anyone else is refused and audited, never ignored.

        Raises:
            OAuthError: `invalid_client` (401).
            Unavailable: The refusal could not be audited.
        """
        if client_id is None or client_id == caller.spiffe_id:
            return
        detail = f"client_id {client_id[:256]!r} is not the authenticated client {caller.spiffe_id}"
        await self.audit.write(
            events.auth_failed(
                agent=AgentRef.of(caller),
                reason=detail,
                ts=self.clock.now(),
                request_id=request_id,
                remote=remote,
                trace_id=self.tracer.trace_id(),
            )
        )
        raise OAuthError(
            "invalid_client",
            detail,
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="credential-broker"'},
        )

    async def _check_replay(self, caller: Caller) -> None:
        if caller.jwt_svid_jti is None:
            raise Unauthenticated("JWT-SVID has no 'jti': replay protection requires one")
        key = f"jwt-svid|{caller.spiffe_id}|{caller.jwt_svid_jti}"
        until = caller.expires_at.timestamp() + self.replay.leeway_seconds
        if not await self.state.first_use(key, until):
            raise Unauthenticated("JWT-SVID was already used (replay protection is on)")

    # -- steps 2 to 7: credentials ----------------------------------------------------------

    async def issue(
        self, caller: Caller, request: CredentialRequest, *, request_id: str, remote: str | None
    ) -> Issued:
        """Decide, issue and audit a credential request (all tools or none).

        Raises:
            PolicyDenied: 403, audited.
            RateLimited: 429, audited.
            Unavailable: 503: a backend or the audit sink failed; nothing was issued.
        """
        with self._stage("context"):
            built = await self.context.for_credentials(
                caller, request, request_id=request_id, remote=remote
            )
        return await self._run(*built)

    async def exchange(
        self, caller: Caller, request: ExchangeRequest, *, request_id: str, remote: str | None
    ) -> Issued:
        """RFC 8693 token exchange: a user token, or a broker token to narrow, for one tool.

        Raises:
            OAuthError: Malformed exchange (see `ContextBuilder.for_exchange`).
            PolicyDenied, RateLimited, Unavailable: As for `issue`.
        """
        with self._stage("context"):
            built = await self.context.for_exchange(
                caller, request, request_id=request_id, remote=remote
            )
        return await self._run(*built)

    async def _run(self, ctx: RequestContext, rejection: UserTokenRejected | None) -> Issued:
        with self._stage("policy"):
            decision = await self._decide(ctx, rejection)
        with self._stage("limits"):
            consumed = await self._consume_limits(ctx, decision)
        credentials: list[Credential] = []
        try:
            with self._stage("issue"):
                await self._issue_all(ctx, decision, credentials)
            with self._stage("persist"):
                records = [self._record(ctx, decision, c) for c in credentials]
                await self.state.put_credentials(records)
            with self._stage("audit"):
                await self.audit.write(events.issued(ctx, decision, credentials))
        except BrokerError as exc:
            await self._fail(ctx, decision, consumed, credentials, exc)
            raise
        self.metrics.issued(credentials)
        return Issued(decision, tuple(credentials))

    async def _decide(self, ctx: RequestContext, rejection: UserTokenRejected | None) -> Decision:
        """Step 3: the policy's decision; a denial is audited and raised."""
        decision_id = new_id()
        if rejection is not None:
            decision = self.policy.deny(decision_id, (rejection.code,), (rejection.message,))
        else:
            decision = await self.policy.decide(ctx, decision_id)
        self.metrics.decision(decision)
        self.metrics.shadowed(decision)
        if not decision.allow:
            await self.audit.write(events.denied(ctx, decision))
            raise PolicyDenied(
                decision.messages[0] if decision.messages else "denied by policy",
                decision_id=decision_id,
                reasons=list(decision.reasons),
            )
        return decision

    async def _consume_limits(self, ctx: RequestContext, decision: Decision) -> Consumed:
        """Step 4: rate limits and budgets; a refusal is audited and raised (429)."""
        consumed, refusal = await self.limits.consume(ctx, decision)
        if refusal is None:
            return consumed
        refused = dataclasses.replace(
            decision,
            allow=False,
            ttl_granted=0,
            reasons=(refusal.code,),
            messages=(f"{refusal.code}: {refusal.key} (retry in {refusal.retry_after} s)",),
        )
        self.metrics.decision(refused)
        await self.audit.write(events.denied(ctx, refused))
        what = "rate limit" if refusal.code == "rate_limited" else "budget"
        raise RateLimited(
            f"{what} reached; retry in {refusal.retry_after} s",
            retry_after=refusal.retry_after,
            decision_id=decision.decision_id,
            reasons=[refusal.code],
        )

    async def _issue_all(
        self, ctx: RequestContext, decision: Decision, out: list[Credential]
    ) -> None:
        """Step 5: every tool's credential, appended to `out` as each is issued."""
        for grant in decision.tools:
            tool = self.tools[grant.tool]
            issuer = self.issuers[tool.type]
            out.append(
                await issuer.issue(IssueRequest(ctx, decision, grant, tool, decision.ttl_granted))
            )

    async def _fail(
        self,
        ctx: RequestContext,
        decision: Decision,
        consumed: Consumed,
        credentials: Sequence[Credential],
        exc: BrokerError,
    ) -> None:
        """Undo an issuance that cannot complete, and audit the failure."""
        await self._undo(credentials)
        await self.limits.refund(consumed)
        if isinstance(exc, Unavailable):
            with contextlib.suppress(Unavailable):
                await self.audit.write(events.failed(ctx, decision, (exc.reason,), exc.detail))

    def _record(
        self, ctx: RequestContext, decision: Decision, credential: Credential
    ) -> CredentialRecord:
        grant = next(g for g in decision.tools if g.tool == credential.tool)
        user = ctx.user
        return CredentialRecord(
            credential_id=credential.credential_id,
            tool=credential.tool,
            type=credential.type,
            agent=ctx.caller.spiffe_id,
            user=user.ref if user else None,
            decision_id=decision.decision_id,
            issued_at=ctx.now.timestamp(),
            expires_at=credential.expires_at.timestamp(),
            lease_id=credential.lease_id,
            scope=" ".join(grant.scopes),
            audience=self.tools[credential.tool].audience,
            user_tier=user.tier if user else None,
            user_groups=user.groups if user else (),
        )

    async def _undo(self, credentials: Sequence[Credential]) -> None:
        """Revoke what was issued for a request that cannot complete."""
        for credential in credentials:
            with contextlib.suppress(BrokerError):
                await self.state.revoke_credential(credential.credential_id)
            if credential.lease_id is None:
                continue
            issuer = self.issuers.get(credential.type)
            if not await release_at_issuer(issuer, self.state, credential.credential_id):
                log.warning(
                    "could not revoke at the issuer; the reconciler will retry",
                    credential_id=credential.audit_id,
                )
