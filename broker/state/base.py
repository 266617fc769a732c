"""Values the state stores hold."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

from broker.domain import LimitCheck, UserRef

__all__ = [
    "APPROVAL_MEMORY_SECONDS",
    "ApprovalRecord",
    "CredentialRecord",
    "LimitResult",
    "approval_from_json",
    "approval_to_json",
    "budget_key",
    "credential_from_json",
    "credential_to_json",
]


@dataclass(frozen=True, slots=True)
class CredentialRecord:
    """What the broker remembers of an issued credential (never the secret itself).

    Attributes:
        credential_id: The JWT `jti` or the Vault credential id.
        tool: The tool.
        type: `jwt` or `vault`.
        agent: The owner agent's SPIFFE ID.
        user: The user it was issued for, if any.
        decision_id: The decision that allowed it.
        issued_at: Epoch seconds.
        expires_at: Epoch seconds.
        revoked: Whether it was revoked before expiry.
        lease_id: Vault lease id or token accessor (to revoke it in Vault), if any.
        scope: Space-separated scopes, for introspection.
        audience: The audience, for introspection.
        user_tier: The user's tier when issued (token exchange decides on it again).
        user_groups: The user's groups when issued.
    """

    credential_id: str
    tool: str
    type: str
    agent: str
    user: UserRef | None
    decision_id: str
    issued_at: float
    expires_at: float
    revoked: bool = False
    lease_id: str | None = None
    scope: str = ""
    audience: str | None = None
    user_tier: str | None = None
    user_groups: tuple[str, ...] = ()


def credential_to_json(record: CredentialRecord) -> str:
    """Serialise a record."""
    return json.dumps(asdict(record), separators=(",", ":"))


def credential_from_json(text: str | bytes) -> CredentialRecord:
    """Deserialise a record."""
    data = json.loads(text)
    data["user_groups"] = tuple(data.get("user_groups") or ())
    user = data.get("user")
    data["user"] = UserRef(user["issuer"], user["subject"]) if user else None
    return CredentialRecord(**data)


@dataclass(frozen=True, slots=True)
class LimitResult:
    """The outcome of consuming limits: all consumed, or none and which one refused.

    Attributes:
        allowed: Whether every limit admitted the request (and was consumed).
        key: The refusing limit's key.
        kind: The refusing limit's kind (`rate` or `budget`).
        retry_after: Seconds until the refusing limit admits the request again.
    """

    allowed: bool
    key: str | None = None
    kind: str | None = None
    retry_after: int = 0


def budget_key(check: LimitCheck, now: float) -> tuple[str, float]:
    """The counter key of a fixed-window budget at `now`, and when that window ends."""
    index = math.floor(now / check.window_seconds)
    return f"{check.key}|{index}", (index + 1) * check.window_seconds


# An approval is remembered this long after it lapses (to answer 410, not 404).
APPROVAL_MEMORY_SECONDS = 86400


@dataclass(frozen=True, slots=True)
class ApprovalRecord:
    """A request waiting for (or given) a human approval, bound to exactly what was asked.

    Attributes:
        approval_id: The approval's id (random).
        decision_id: The decision that required it.
        agent: The requesting agent's SPIFFE ID (only it may collect the credentials).
        user: The user it acts for, if any, and what the policy decides on about them.
        user_tier: The user's tier.
        user_groups: The user's groups.
        user_expires_at: The user token's `exp` (bounds the credentials' TTL).
        actors: Earlier agents of the delegation chain.
        tools: The tools asked for.
        ttl_requested: The TTL asked for (None: the cap).
        created_at: Epoch seconds.
        expires_at: When a pending approval lapses (epoch seconds).
        status: `pending`, `approved`, `denied`, `expired` or `issued`.
        approver: Who approved or denied it.
        reason: The approver's reason.
    """

    approval_id: str
    decision_id: str
    agent: str
    user: UserRef | None
    tools: tuple[str, ...]
    ttl_requested: int | None
    created_at: float
    expires_at: float
    user_tier: str | None = None
    user_groups: tuple[str, ...] = ()
    user_expires_at: float | None = None
    actors: tuple[str, ...] = ()
    status: str = "pending"
    approver: str | None = None
    reason: str | None = None


def approval_to_json(record: ApprovalRecord) -> str:
    """Serialise an approval."""
    return json.dumps(asdict(record), separators=(",", ":"))


def approval_from_json(text: str | bytes) -> ApprovalRecord:
    """Deserialise an approval."""
    data = json.loads(text)
    for key in ("tools", "user_groups", "actors"):
        data[key] = tuple(data.get(key) or ())
    user = data.get("user")
    data["user"] = UserRef(user["issuer"], user["subject"]) if user else None
    return ApprovalRecord(**data)
