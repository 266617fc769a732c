"""Domain values that flow through the pipeline: frozen, slotted, never plain dicts.

request -> `Caller` (authn) -> `RequestContext` (context) -> `Decision` (policy)
-> `Credential` (issuers) -> `AuditEvent` (audit) -> response.
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

__all__ = [
    "AuthMethod",
    "Caller",
    "Credential",
    "Decision",
    "Limit",
    "LimitCheck",
    "RequestContext",
    "Secret",
    "ShadowDenial",
    "ToolGrant",
    "UserContext",
    "UserRef",
]


class AuthMethod(StrEnum):
    """How a caller proved its SPIFFE identity."""

    X509_SVID = "x509_svid"
    JWT_SVID = "jwt_svid"


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated workload.

    Attributes:
        spiffe_id: The workload's SPIFFE ID.
        trust_domain: Its trust domain (ours or a federated one).
        method: How it authenticated.
        expires_at: When the presented SVID expires (bounds any credential's TTL).
        x509_sha256: SHA-256 of the leaf certificate (DER), lowercase hex, for mTLS callers.
        jwt_svid_jti: The JWT-SVID `jti`, when it had one.
        via_proxy: SPIFFE ID of the trusted proxy that forwarded the client certificate.
    """

    spiffe_id: str
    trust_domain: str
    method: AuthMethod
    expires_at: datetime
    x509_sha256: str | None = None
    jwt_svid_jti: str | None = None
    via_proxy: str | None = None

    @property
    def x5t_s256(self) -> str | None:
        """The RFC 8705 `x5t#S256` confirmation value (base64url, unpadded), if mTLS."""
        if self.x509_sha256 is None:
            return None
        return base64.urlsafe_b64encode(bytes.fromhex(self.x509_sha256)).rstrip(b"=").decode()


class Secret:
    """A secret value (a token, a password) that never shows in a repr, str or log."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        """Wrap a secret."""
        self._value = value

    def reveal(self) -> str:
        """The secret itself: call only where it is handed to its owner."""
        return self._value

    def __repr__(self) -> str:
        """Never the value."""
        return "Secret(***)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        """Constant-time comparison with another secret."""
        return isinstance(other, Secret) and hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        """Secrets are not hashed (to keep them out of sets and dict keys)."""
        raise TypeError("Secret is not hashable")


@dataclass(frozen=True, slots=True)
class UserRef:
    """Who a user is, across identity providers: the token's issuer and subject."""

    issuer: str
    subject: str

    def __str__(self) -> str:
        """`issuer#subject`: the form limit keys and logs use (never parsed back)."""
        return f"{self.issuer}#{self.subject}"


@dataclass(frozen=True, slots=True)
class UserContext:
    """The end user on whose behalf an agent acts, from a validated user token.

    Attributes:
        issuer: The token's `iss`.
        subject: The token's `sub`.
        tier: The user's tier claim, if any.
        groups: The user's groups claim.
        expires_at: The token's `exp` (epoch seconds); bounds any credential's TTL.
        actors: Earlier actors from the token's RFC 8693 `act` claim, least recent first.
        token_id: The token's `jti`, if any (never the token itself).
    """

    issuer: str
    subject: str
    expires_at: float
    tier: str | None = None
    groups: tuple[str, ...] = ()
    actors: tuple[str, ...] = ()
    token_id: str | None = None

    @property
    def ref(self) -> UserRef:
        """The user's issuer and subject."""
        return UserRef(self.issuer, self.subject)


@dataclass(frozen=True, slots=True)
class RequestContext:
    """Everything the policy decides on: who asks, for whom, for what, how long.

    `actors` are the agents that acted before the caller (least recent first): from the
    user token's `act` claim, or from the chain of a broker token being exchanged.
    `not_after` bounds the expiry of what is issued (the exchanged token's own `exp`).
    `trace_id` is the request's OpenTelemetry trace, when tracing is on.
    """

    caller: Caller
    user: UserContext | None
    tools: tuple[str, ...]
    ttl_requested: int | None
    now: datetime
    request_id: str
    remote: str | None = None
    session_id: str | None = None
    reason: str | None = None
    scopes: tuple[str, ...] | None = None
    actors: tuple[str, ...] = ()
    not_after: float | None = None
    trace_id: str | None = None

    @property
    def delegation_chain(self) -> tuple[str, ...]:
        """Outermost principal first: the user, earlier agents, the acting agent last."""
        head = (self.user.subject,) if self.user is not None else ()
        return (*head, *self.actors, self.caller.spiffe_id)


@dataclass(frozen=True, slots=True)
class Limit:
    """A rate limit (sliding window) or a budget (fixed window) a rule declares.

    Attributes:
        kind: `rate` (any `window_seconds` span) or `budget` (calendar-aligned windows).
        per: Which request attributes form the counter key (`agent`, `user`, `tool`).
        limit: How many credentials the key may get per window.
        window_seconds: The window length.
    """

    kind: str
    per: tuple[str, ...]
    limit: int
    window_seconds: int


@dataclass(frozen=True, slots=True)
class LimitCheck:
    """A rate limit or budget the pipeline must consume before issuing.

    Attributes:
        rule_id: The rule that declared it.
        kind: `rate` (sliding window) or `budget` (fixed window).
        key: The counter key (rule, kind and the bound attributes).
        limit: Allowed count per window.
        window_seconds: Window length.
        cost: How many credentials of this request count against it.
    """

    rule_id: str
    kind: str
    key: str
    limit: int
    window_seconds: int
    cost: int = 1


@dataclass(frozen=True, slots=True)
class ToolGrant:
    """The policy's answer for one requested tool (with the limits its rule declares)."""

    tool: str
    allowed: bool
    rule_id: str | None
    max_ttl: int
    scopes: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()
    messages: tuple[str, ...] = ()
    limits: tuple[Limit, ...] = ()
    require_approval: bool = False


@dataclass(frozen=True, slots=True)
class ShadowDenial:
    """What a shadow rule (`shadow: true`) would have denied: recorded, never enforced.

    Attributes:
        rule_id: The shadow rule.
        tool: The tool it would have denied.
        reason: The reason code it would have given.
        message: The human explanation.
    """

    rule_id: str
    tool: str
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class Decision:
    """A policy decision for a whole request (all tools or none).

    Attributes:
        decision_id: Unique id, returned to the caller and written to the audit trail.
        allow: Whether every tool is allowed.
        policy_id: The policy's id.
        policy_version: Declared version plus content hash.
        ttl_granted: The TTL every credential gets (0 when denied).
        tools: Per-tool answers.
        reasons: Reason codes of the denial (or of a later refusal), deduplicated.
        messages: Human explanations of the reasons.
        would_deny: Denials of shadow rules: recorded, not enforced.
    """

    decision_id: str
    allow: bool
    policy_id: str
    policy_version: str
    ttl_granted: int
    tools: tuple[ToolGrant, ...]
    reasons: tuple[str, ...] = ()
    messages: tuple[str, ...] = ()
    would_deny: tuple[ShadowDenial, ...] = ()

    @classmethod
    def denial(
        cls,
        decision_id: str,
        *,
        policy_id: str,
        policy_version: str,
        reasons: Sequence[str],
        messages: Sequence[str],
        tools: tuple[ToolGrant, ...] = (),
        would_deny: tuple[ShadowDenial, ...] = (),
    ) -> Decision:
        """A denial (no TTL) under the policy `policy_id` at `policy_version`."""
        return cls(
            decision_id=decision_id,
            allow=False,
            policy_id=policy_id,
            policy_version=policy_version,
            ttl_granted=0,
            tools=tools,
            reasons=tuple(reasons),
            messages=tuple(messages),
            would_deny=would_deny,
        )

    @property
    def shadow(self) -> tuple[str, ...]:
        """The shadow denials as text (`rule: reason: message`), as the audit trail's `shadow`."""
        return tuple(f"{d.rule_id}: {d.reason}: {d.message}" for d in self.would_deny)

    @property
    def require_approval(self) -> bool:
        """Whether an allowing rule wants a human approval before anything is issued."""
        return self.allow and any(g.require_approval for g in self.tools if g.allowed)

    @property
    def rule_ids(self) -> tuple[str, ...]:
        """The rules that allowed the tools, in request order, deduplicated."""
        return tuple(dict.fromkeys(g.rule_id for g in self.tools if g.rule_id))


@dataclass(frozen=True, slots=True)
class Credential:
    """An issued credential. `secret` is the token or the secret data: never logged.

    Attributes:
        tool: The tool it is for.
        type: `jwt` or `vault`.
        credential_id: The JWT `jti`, or the Vault lease / token accessor.
        expires_at: When it stops working.
        secret: The token (`jwt`, Vault `token`/`kv` wrapping token) as a `Secret`.
        data: Secret fields (`vault` dynamic secrets), each a `Secret`.
        audit_id: What the audit trail records as the id (an HMAC for Vault leases).
        lease_id: The backend lease to revoke when the credential ends, if it holds one.
    """

    tool: str
    type: str
    credential_id: str
    expires_at: datetime
    secret: Secret | None = None
    data: tuple[tuple[str, Secret], ...] = ()
    audit_id: str | None = None
    lease_id: str | None = None
