"""Audit events: who got what, for whom, under which policy version, or why not.

Who: the agent, the user and the delegation chain; what: credential ids and expiries.
Never a token, a secret, a user token or a clear Vault lease id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from broker.clock import rfc3339
from broker.domain import Caller, Credential, Decision, RequestContext, UserRef

__all__ = [
    "AgentRef",
    "AuditEvent",
    "CredentialRef",
    "agent_revoked",
    "auth_failed",
    "credential_revoked",
    "denied",
    "failed",
    "gateway_request",
    "issued",
]


@dataclass(frozen=True, slots=True)
class AgentRef:
    """The agent as the audit trail names it."""

    spiffe_id: str | None
    x509_sha256: str | None = None
    jwt_svid_jti: str | None = None
    via_proxy: str | None = None
    verified: bool = True

    @classmethod
    def of(cls, caller: Caller) -> AgentRef:
        """From an authenticated caller."""
        return cls(caller.spiffe_id, caller.x509_sha256, caller.jwt_svid_jti, caller.via_proxy)

    def to_record(self) -> dict[str, object]:
        """The `agent` object of a record."""
        out: dict[str, object] = {"spiffe_id": self.spiffe_id}
        if self.x509_sha256:
            out["x509_sha256"] = self.x509_sha256
        if self.jwt_svid_jti:
            out["jwt_svid_jti"] = self.jwt_svid_jti
        if self.via_proxy:
            out["via_proxy"] = self.via_proxy
        if not self.verified:
            out["verified"] = False
        return out


@dataclass(frozen=True, slots=True)
class CredentialRef:
    """A credential as the audit trail names it: never the secret."""

    tool: str
    type: str
    credential_id: str
    expires_at: str

    @classmethod
    def of(cls, credential: Credential) -> CredentialRef:
        """From an issued credential (its `audit_id`: the jti, or an HMAC of a lease id)."""
        return cls(
            credential.tool,
            credential.type,
            credential.audit_id or credential.credential_id,
            rfc3339(credential.expires_at),
        )


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One audit record before it is chained."""

    event: str
    ts: datetime
    request_id: str | None
    remote: str | None
    agent: AgentRef | None = None
    decision_id: str | None = None
    user: UserRef | None = None
    delegation_chain: tuple[str, ...] = ()
    tools: tuple[str, ...] = ()
    ttl_requested: int | None = None
    ttl_granted: int | None = None
    decision: str | None = None
    reasons: tuple[str, ...] = ()
    messages: tuple[str, ...] = ()
    policy: tuple[str, str] | None = None
    rules: tuple[str, ...] = ()
    shadow: tuple[str, ...] = ()
    credentials: tuple[CredentialRef, ...] = ()
    session_id: str | None = None
    reason: str | None = None
    trace_id: str | None = None
    target: dict[str, object] = field(default_factory=dict)
    gateway: dict[str, object] = field(default_factory=dict)

    def to_record(self) -> dict[str, object]:
        """The JSON object of the record (without chain fields).

        Integers and strings only, so any JSON tool reproduces the canonical form exactly.
        """
        record: dict[str, object] = {
            "ts": rfc3339(self.ts),
            "event": self.event,
            "request_id": self.request_id,
            "remote": self.remote,
            "decision_id": self.decision_id,
            "agent": self.agent.to_record() if self.agent else None,
            "delegation_chain": list(self.delegation_chain),
            "tools": list(self.tools),
            "ttl_requested": self.ttl_requested,
            "ttl_granted": self.ttl_granted,
            "decision": self.decision,
            "reasons": list(self.reasons),
            "policy": {"id": self.policy[0], "version": self.policy[1]} if self.policy else None,
            "credentials": [
                {
                    "tool": c.tool,
                    "type": c.type,
                    "credential_id": c.credential_id,
                    "expires_at": c.expires_at,
                }
                for c in self.credentials
            ],
        }
        if self.user is not None:
            record["user"] = {"iss": self.user.issuer, "sub": self.user.subject}
        if self.messages:
            record["messages"] = list(self.messages)
        if self.rules:
            record["rules"] = list(self.rules)
        if self.shadow:
            record["shadow"] = list(self.shadow)
        if self.session_id is not None:
            record["session_id"] = self.session_id
        if self.reason is not None:
            record["reason"] = self.reason
        if self.trace_id is not None:
            record["trace_id"] = self.trace_id
        if self.target:
            record["target"] = self.target
        if self.gateway:
            record["gateway"] = self.gateway
        return record


def _base(ctx: RequestContext, decision: Decision) -> dict[str, object]:
    return {
        "ts": ctx.now,
        "request_id": ctx.request_id,
        "remote": ctx.remote,
        "agent": AgentRef.of(ctx.caller),
        "decision_id": decision.decision_id,
        "user": ctx.user.ref if ctx.user else None,
        "delegation_chain": ctx.delegation_chain,
        "tools": ctx.tools,
        "ttl_requested": ctx.ttl_requested,
        "policy": (decision.policy_id, decision.policy_version),
        "rules": decision.rule_ids,
        "shadow": decision.shadow,
        "session_id": ctx.session_id,
        "reason": ctx.reason,
        "trace_id": ctx.trace_id,
    }


def issued(ctx: RequestContext, decision: Decision, credentials: list[Credential]) -> AuditEvent:
    """`credential.issued`."""
    return AuditEvent(
        event="credential.issued",
        ttl_granted=decision.ttl_granted,
        decision="allow",
        credentials=tuple(CredentialRef.of(c) for c in credentials),
        **_base(ctx, decision),  # type: ignore[arg-type]
    )


def denied(ctx: RequestContext, decision: Decision) -> AuditEvent:
    """`credential.denied` (policy, user token, TTL, rate limit or budget)."""
    return AuditEvent(
        event="credential.denied",
        ttl_granted=0,
        decision="deny",
        reasons=decision.reasons,
        messages=decision.messages,
        **_base(ctx, decision),  # type: ignore[arg-type]
    )


def failed(
    ctx: RequestContext, decision: Decision, reasons: tuple[str, ...], message: str
) -> AuditEvent:
    """`credential.failed`: allowed, but a backend (Vault, the state store) could not issue."""
    return AuditEvent(
        event="credential.failed",
        ttl_granted=0,
        decision="allow",
        reasons=reasons,
        messages=(message,),
        **_base(ctx, decision),  # type: ignore[arg-type]
    )


def auth_failed(
    *,
    agent: AgentRef,
    reason: str,
    ts: datetime,
    request_id: str | None,
    remote: str | None,
    trace_id: str | None = None,
) -> AuditEvent:
    """`auth.failed`: a presented identity did not verify (or the agent is revoked)."""
    return AuditEvent(
        event="auth.failed",
        ts=ts,
        request_id=request_id,
        remote=remote,
        agent=agent,
        decision="deny",
        reasons=("authentication_failed",),
        messages=(reason,),
        trace_id=trace_id,
    )


def credential_revoked(
    *,
    actor: Caller,
    credential: CredentialRef,
    owner: str,
    ts: datetime,
    request_id: str | None,
    remote: str | None,
    cause: str,
) -> AuditEvent:
    """`credential.revoked`."""
    return AuditEvent(
        event="credential.revoked",
        ts=ts,
        request_id=request_id,
        remote=remote,
        agent=AgentRef.of(actor),
        tools=(credential.tool,),
        credentials=(credential,),
        reasons=(cause,),
        target={"owner": owner},
    )


def agent_revoked(
    *,
    actor: Caller,
    spiffe_id: str,
    until: datetime,
    credentials: tuple[CredentialRef, ...],
    ts: datetime,
    request_id: str | None,
    remote: str | None,
) -> AuditEvent:
    """`agent.revoked`."""
    return AuditEvent(
        event="agent.revoked",
        ts=ts,
        request_id=request_id,
        remote=remote,
        agent=AgentRef.of(actor),
        credentials=credentials,
        reasons=("admin_revocation",),
        target={"spiffe_id": spiffe_id, "until": rfc3339(until)},
    )


def gateway_request(
    *,
    event: str,
    ts: datetime,
    request_id: str,
    remote: str | None,
    agent: str | None,
    user: UserRef | None,
    delegation_chain: tuple[str, ...],
    tool: str | None,
    decision: str,
    reasons: tuple[str, ...],
    details: dict[str, object],
) -> AuditEvent:
    """`gateway.forwarding` (durable before a request is forwarded) or `gateway.request`.

    `details` carries the route, method, path (never the query), status, bytes, latency,
    model, usage and cost: integers and strings only, never a key, a token or a body.
    """
    return AuditEvent(
        event=event,
        ts=ts,
        request_id=request_id,
        remote=remote,
        agent=AgentRef(agent) if agent else None,
        decision_id=request_id,
        user=user,
        delegation_chain=delegation_chain,
        tools=(tool,) if tool else (),
        decision=decision,
        reasons=reasons,
        gateway=details,
    )
