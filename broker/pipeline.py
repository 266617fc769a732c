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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import NoReturn

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
from broker.domain import (
    Caller,
    Credential,
    Decision,
    RequestContext,
    Secret,
    UserContext,
    UserRef,
)
from broker.errors import (
    BrokerError,
    Conflict,
    Forbidden,
    Gone,
    NotFound,
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
from broker.state.base import ApprovalRecord, CredentialRecord
from broker.tracing import SpanScope, Tracer
from broker.typing import (
    AuditSink,
    Authenticator,
    Clock,
    Issuer,
    PolicyDecider,
    StateStore,
)

__all__ = [
    "CredentialRequest",
    "ExchangeRequest",
    "Issued",
    "Pending",
    "Pipeline",
    "ReplayGuard",
    "new_id",
]

DEFAULT_APPROVAL_SECONDS = 900

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
class Pending:
    """A request waiting for a human approval (202): nothing was issued."""

    approval_id: str
    decision_id: str

    def to_json(self) -> dict[str, object]:
        """The 202 body (CONTRACT section 8)."""
        return {
            "approval_id": self.approval_id,
            "decision_id": self.decision_id,
            "status": "pending",
        }


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
        admins: frozenset[str] = frozenset(),
        approval_seconds: int = DEFAULT_APPROVAL_SECONDS,
        approver_groups: frozenset[str] = frozenset(),
        on_pending: Callable[[ApprovalRecord], None] | None = None,
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
            state: Where issued credentials and pending approvals are remembered.
            audit: Where every decision is recorded first.
            replay: JWT-SVID replay protection.
            metrics: Counters and per-step latency histograms.
            tracer: A span per step (a no-op unless tracing is configured).
            unparsed: Where failures that claim no identity are counted (see
                `broker.audit.aggregate`).
            admins: SPIFFE IDs that may approve or deny.
            approval_seconds: How long an approval may stay pending.
            approver_groups: User-token groups whose members may approve (the token is
                verified by the context builder's user-token verifier).
            on_pending: Told of each new pending approval (the webhook), after its audit.
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
        self.admins = admins
        self.approval_seconds = approval_seconds
        self.approver_groups = approver_groups
        self.on_pending = on_pending

    def _stage(self, name: str) -> _Stage:
        """Time one step (histogram `broker_stage_duration_seconds`) in a span of its own."""
        return _Stage(name, self.metrics, self.tracer)

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
    ) -> Issued | Pending:
        """Decide, issue and audit a credential request (all tools or none).

        A rule with `require_approval` makes it `Pending` instead: nothing is issued until
        an approver approves and the agent collects (`collect`).

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
        issued = await self._run(*built, may_wait=False)
        assert isinstance(issued, Issued)
        return issued

    async def _run(
        self,
        ctx: RequestContext,
        rejection: UserTokenRejected | None,
        *,
        may_wait: bool = True,
        approval: ApprovalRecord | None = None,
    ) -> Issued | Pending:
        with self._stage("policy"):
            decision = await self._decide(ctx, rejection)
        if decision.require_approval and approval is None:
            return await self._request_approval(ctx, decision, may_wait=may_wait)
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
                record = events.issued(ctx, decision, credentials)
                if approval is not None:
                    record = dataclasses.replace(
                        record, target={"approval_id": approval.approval_id}
                    )
                await self.audit.write(record)
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

    async def _refuse(
        self, ctx: RequestContext, decision: Decision, code: str, message: str
    ) -> NoReturn:
        refused = dataclasses.replace(
            decision, allow=False, ttl_granted=0, reasons=(code,), messages=(message,)
        )
        self.metrics.decision(refused)
        await self.audit.write(events.denied(ctx, refused))
        raise PolicyDenied(message, decision_id=decision.decision_id, reasons=[code])

    async def _request_approval(
        self, ctx: RequestContext, decision: Decision, *, may_wait: bool
    ) -> Pending:
        """Keep the request, bound to its agent, user, tools and TTL, until someone decides."""
        if not may_wait:
            await self._refuse(
                ctx, decision, "approval_required", "this request needs a human approval"
            )
        user = ctx.user
        now = ctx.now.timestamp()
        record = ApprovalRecord(
            approval_id=new_id(),
            decision_id=decision.decision_id,
            agent=ctx.caller.spiffe_id,
            user=user.ref if user else None,
            tools=ctx.tools,
            ttl_requested=ctx.ttl_requested,
            created_at=now,
            expires_at=now + self.approval_seconds,
            user_tier=user.tier if user else None,
            user_groups=user.groups if user else (),
            user_expires_at=user.expires_at if user else None,
            actors=ctx.actors,
        )
        await self.state.put_approval(record)
        await self.audit.write(events.approval_requested(ctx, decision, record.approval_id))
        if self.on_pending is not None:
            self.on_pending(record)
        return Pending(record.approval_id, decision.decision_id)

    async def _approval(self, approval_id: str) -> ApprovalRecord:
        record = await self.state.get_approval(approval_id)
        if record is None:
            raise NotFound("no such approval")
        if record.status == "pending" and self.clock.time() >= record.expires_at:
            expired = await self.state.set_approval_status(
                approval_id, expected="pending", status="expired"
            )
            if expired is not None:
                await self.audit.write(
                    events.approval_expired(approval=expired, ts=self.clock.now())
                )
            raise Gone("the approval expired")
        if record.status == "expired":  # expired earlier, perhaps on another replica
            raise Gone("the approval expired")
        return record

    async def decide_approval(
        self,
        approver: Caller,
        approval_id: str,
        *,
        approve: bool,
        reason: str | None,
        request_id: str,
        remote: str | None,
        user_token: Secret | None = None,
    ) -> ApprovalRecord:
        """Approve or deny a pending approval, at most once.

        Approvers: administrators (SPIFFE IDs), or any authenticated caller presenting a
        valid user token in one of `approver_groups` (never for that user's own request).

        Raises:
            Forbidden: The caller may not approve.
            NotFound: No such approval.
            Gone: It expired.
            Conflict: It was already decided.
        """
        human = await self._approver(approver, user_token)
        record = await self._approval(approval_id)
        if human is not None and human == record.user:
            raise Forbidden("a user may not approve a request made on their own behalf")
        decided = await self.state.set_approval_status(
            approval_id,
            expected="pending",
            status="approved" if approve else "denied",
            approver=approver.spiffe_id,
            reason=reason,
        )
        if decided is None:
            raise Conflict(f"the approval is already {record.status}")
        event = events.approval_decided(
            approver=approver,
            approval=decided,
            ts=self.clock.now(),
            request_id=request_id,
            remote=remote,
        )
        if human is not None:
            event = dataclasses.replace(
                event,
                target={
                    **event.target,
                    "approver_user": {"iss": human.issuer, "sub": human.subject},
                },
            )
        await self.audit.write(event)
        return decided

    async def _approver(self, caller: Caller, user_token: Secret | None) -> UserRef | None:
        """None for an administrator; the approving user for a user token in an approver group.

        Raises:
            Forbidden: Neither.
        """
        if caller.spiffe_id in self.admins and user_token is None:
            return None
        if user_token is None or not self.approver_groups:
            raise Forbidden("only an approver may decide approvals")
        try:
            user = await self.context.verify_user_token(user_token)
        except UserTokenRejected as exc:
            raise Forbidden(f"approver token refused: {exc.message}") from None
        if not set(user.groups) & self.approver_groups:
            raise Forbidden("the user is in no approver group")
        return user.ref

    async def collect(
        self, caller: Caller, approval_id: str, *, request_id: str, remote: str | None
    ) -> Issued | Pending:
        """The requesting agent polls: pending, or the credentials exactly once.

        The policy decides again when the credentials are collected (a policy changed in
        the meantime still applies) and the TTL counts from this moment.

        Raises:
            NotFound: No such approval for this agent.
            PolicyDenied: The approver denied it (or the policy now does).
            Gone: It expired, or its credentials were already collected.
        """
        record = await self._approval(approval_id)
        if record.agent != caller.spiffe_id:
            raise NotFound("no such approval")
        if record.status == "pending":
            return Pending(record.approval_id, record.decision_id)
        if record.status == "denied":
            raise PolicyDenied(
                "the approver denied the request",
                decision_id=record.decision_id,
                reasons=["approval_denied"],
            )
        claimed = await self.state.set_approval_status(
            approval_id, expected="approved", status="issued"
        )
        if claimed is None:
            raise Gone(f"the approval is {record.status}")
        user = None
        if record.user is not None:
            user = UserContext(
                record.user.issuer,
                record.user.subject,
                record.user_expires_at or 0.0,
                tier=record.user_tier,
                groups=record.user_groups,
                actors=record.actors,
            )
        ctx = RequestContext(
            caller,
            user,
            record.tools,
            record.ttl_requested,
            self.clock.now(),
            request_id,
            remote=remote,
            actors=record.actors,
        )
        try:
            return await self._run(ctx, None, approval=claimed)
        except Unavailable:
            # Nothing was issued: the agent may collect again.
            with contextlib.suppress(Unavailable):
                await self.state.set_approval_status(
                    approval_id, expected="issued", status="approved"
                )
            raise

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


class _Stage:
    """A step's timer: a plain context manager (a request runs seven), a span if tracing."""

    __slots__ = ("_metrics", "_name", "_span", "_started", "_tracer")

    def __init__(self, name: str, metrics: Metrics, tracer: Tracer) -> None:
        self._name = name
        self._metrics = metrics
        self._tracer = tracer
        self._span: SpanScope | None = None
        self._started = 0.0

    def __enter__(self) -> None:
        if self._tracer.enabled:
            self._span = self._tracer.span(self._name)
            self._span.__enter__()
        self._started = time.perf_counter()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._metrics.stage(self._name, time.perf_counter() - self._started)
        if self._span is not None:
            self._span.__exit__(kind, error, traceback)
