"""Audit events: who got what, for whom, under which policy version, or why not.

Who: the agent, the user and the delegation chain; what: credential ids and expiries.
Never a token, a secret, a user token or a clear Vault lease id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from broker.clock import rfc3339
from broker.domain import Caller, Credential, Decision, RequestContext, ShadowDenial, UserRef
from broker.state.base import ApprovalRecord

__all__ = [
    "AgentRef",
    "AuditEvent",
    "CredentialRef",
    "agent_revoked",
    "approval_decided",
    "approval_expired",
    "approval_requested",
    "auth_failed",
    "credential_revoked",
    "denied",
    "failed",
    "gateway_request",
    "issued",
    "policy_loaded",
    "revoke_refused",
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
    would_deny: tuple[ShadowDenial, ...] = ()
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
        optional: dict[str, object] = {
            "messages": list(self.messages),
            "rules": list(self.rules),
            "shadow": list(self.shadow),
            "session_id": self.session_id,
            "reason": self.reason,
            "trace_id": self.trace_id,
            "target": self.target,
            "gateway": self.gateway,
        }
        # Optional members appear only when they say something (None, [] and {} stay out).
        record.update((k, v) for k, v in optional.items() if v not in (None, [], {}))
        if self.would_deny:
            record["would_deny"] = {
                "reasons": list(dict.fromkeys(d.reason for d in self.would_deny)),
                "rules": list(dict.fromkeys(d.rule_id for d in self.would_deny)),
                "tools": list(dict.fromkeys(d.tool for d in self.would_deny)),
            }
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
        "would_deny": decision.would_deny,
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


def revoke_refused(
    *,
    actor: Caller,
    credential: CredentialRef | None,
    owner: str | None,
    ts: datetime,
    request_id: str | None,
    remote: str | None,
) -> AuditEvent:
    """`credential.revoke_refused`: not the caller's credential, or no such live credential.

    An unknown id is not written down: it may be a guess, or a Vault lease id, which the
    audit trail never holds in clear.
    """
    known = credential is not None
    return AuditEvent(
        event="credential.revoke_refused",
        ts=ts,
        request_id=request_id,
        remote=remote,
        agent=AgentRef.of(actor),
        tools=(credential.tool,) if credential is not None else (),
        credentials=(credential,) if credential is not None else (),
        decision="deny",
        reasons=("not_owner",) if known else ("unknown_credential",),
        target={"owner": owner} if known else {},
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


def policy_loaded(
    *, policy_id: str, version: str, content_hash: str, ts: datetime, archived: str | None
) -> AuditEvent:
    """`policy.loaded`: a policy version went into force (start-up or reload).

    Args:
        policy_id: The policy's id.
        version: Its version string (declared version plus short hash).
        content_hash: The full SHA-256 of the file, hex.
        ts: When it went into force.
        archived: The file name of its stored copy beside the audit log, if stored.
    """
    target: dict[str, object] = {"hash": f"sha256:{content_hash}"}
    if archived is not None:
        target["archived"] = archived
    return AuditEvent(
        event="policy.loaded",
        ts=ts,
        request_id=None,
        remote=None,
        policy=(policy_id, version),
        target=target,
    )


def approval_requested(ctx: RequestContext, decision: Decision, approval_id: str) -> AuditEvent:
    """`approval.requested`: allowed, but a rule wants a human approval first."""
    return AuditEvent(
        event="approval.requested",
        ttl_granted=0,
        decision="pending",
        target={"approval_id": approval_id},
        **_base(ctx, decision),  # type: ignore[arg-type]
    )


def approval_decided(
    *,
    approver: Caller,
    approval: ApprovalRecord,
    ts: datetime,
    request_id: str | None,
    remote: str | None,
) -> AuditEvent:
    """`approval.granted` or `approval.denied`, naming the approver as `agent`."""
    granted = approval.status == "approved"
    target: dict[str, object] = {"approval_id": approval.approval_id, "requester": approval.agent}
    if approval.reason:
        target["reason"] = approval.reason
    return AuditEvent(
        event="approval.granted" if granted else "approval.denied",
        ts=ts,
        request_id=request_id,
        remote=remote,
        agent=AgentRef.of(approver),
        decision_id=approval.decision_id,
        user=approval.user,
        tools=approval.tools,
        ttl_requested=approval.ttl_requested,
        decision="allow" if granted else "deny",
        reasons=() if granted else ("approval_denied",),
        target=target,
    )


def approval_expired(*, approval: ApprovalRecord, ts: datetime) -> AuditEvent:
    """`approval.expired`: nobody decided in time."""
    return AuditEvent(
        event="approval.expired",
        ts=ts,
        request_id=None,
        remote=None,
        agent=AgentRef(approval.agent),
        decision_id=approval.decision_id,
        user=approval.user,
        tools=approval.tools,
        ttl_requested=approval.ttl_requested,
        decision="deny",
        reasons=("approval_expired",),
        target={"approval_id": approval.approval_id},
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
