"""What every issuer receives."""

from __future__ import annotations

from dataclasses import dataclass

from broker.config.settings import ToolSettings
from broker.domain import Decision, RequestContext, ToolGrant

__all__ = ["IssueRequest", "act_claim"]


@dataclass(frozen=True, slots=True)
class IssueRequest:
    """One credential to issue, already allowed by the policy.

    Attributes:
        ctx: The request context (caller, user, delegation chain).
        decision: The allowing decision.
        grant: The policy's answer for this tool (rule, scopes).
        tool: The tool's configuration.
        ttl: The granted TTL in seconds.
    """

    ctx: RequestContext
    decision: Decision
    grant: ToolGrant
    tool: ToolSettings
    ttl: int


def act_claim(ctx: RequestContext) -> dict[str, object]:
    """The RFC 8693 `act` claim of a request's delegation chain.

    The acting agent is the outermost `act`; earlier actors nest inside it, the least
    recent deepest. The user is the `sub`, never an actor.
    """
    act: dict[str, object] = {"sub": ctx.caller.spiffe_id}
    cursor = act
    for actor in reversed(ctx.actors):
        nested: dict[str, object] = {"sub": actor}
        cursor["act"] = nested
        cursor = nested
    return act
