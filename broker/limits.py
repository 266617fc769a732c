"""The limits step: rate limits and budgets, enforced after the policy allowed a request.

The policy only declares which limits apply (each allowing rule's `rate_limits` and
`budgets`, carried on its `ToolGrant`); this step binds them to the request's agent, user
and tool, and consumes them atomically in the shared state store (all or none), so that
"60 per user per minute" holds across replicas. What a failed issuance consumed is
refunded (`refund`, shared with the gateway's budgets).
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from broker.domain import Decision, LimitCheck, RequestContext
from broker.errors import Unavailable
from broker.typing import StateStore

__all__ = ["Consumed", "LimitRefusal", "Limits", "limit_checks", "refund"]

log = structlog.get_logger(__name__)

NO_USER = "-"


def limit_checks(ctx: RequestContext, decision: Decision) -> tuple[LimitCheck, ...]:
    """The counters an allowed request counts against: one per rule, limit and bound key.

    Two tools granted by the same rule under a per-agent limit count twice against it.
    """
    user = str(ctx.user.ref) if ctx.user else NO_USER
    checks: dict[str, LimitCheck] = {}
    for grant in decision.tools:
        if grant.rule_id is None:
            continue
        values = {"agent": ctx.caller.spiffe_id, "user": user, "tool": grant.tool}
        for limit in grant.limits:
            bound = "|".join(f"{name}={values[name]}" for name in limit.per)
            key = f"{grant.rule_id}|{limit.kind}|{limit.window_seconds}|{bound}"
            existing = checks.get(key)
            checks[key] = LimitCheck(
                rule_id=grant.rule_id,
                kind=limit.kind,
                key=key,
                limit=limit.limit,
                window_seconds=limit.window_seconds,
                cost=(existing.cost + 1) if existing else 1,
            )
    return tuple(checks.values())


@dataclass(frozen=True, slots=True)
class LimitRefusal:
    """Which limit refused a request, and when to retry."""

    code: str
    key: str
    retry_after: int


@dataclass(frozen=True, slots=True)
class Consumed:
    """What a request consumed (to refund if its issuance fails)."""

    checks: tuple[LimitCheck, ...]
    member: str
    at: float


class Limits:
    """Consumes and refunds limits in the shared state store."""

    def __init__(self, state: StateStore) -> None:
        """Wire the state store."""
        self._state = state

    async def consume(
        self, ctx: RequestContext, decision: Decision
    ) -> tuple[Consumed, LimitRefusal | None]:
        """Consume every limit the decision's grants declare, or none.

        Returns:
            What was consumed, and the refusal when some limit is exhausted.

        Raises:
            Unavailable: The state store failed (nothing consumed).
        """
        consumed = Consumed(limit_checks(ctx, decision), decision.decision_id, ctx.now.timestamp())
        if not consumed.checks:
            return consumed, None
        result = await self._state.consume_limits(consumed.checks, consumed.member, consumed.at)
        if result.allowed:
            return consumed, None
        code = "rate_limited" if result.kind == "rate" else "budget_exhausted"
        return consumed, LimitRefusal(code, result.key or "", result.retry_after)

    async def refund(self, consumed: Consumed) -> None:
        """Give back what `consume` took (best effort: a lost refund only over-counts)."""
        await refund(self._state, consumed)


async def refund(state: StateStore, consumed: Consumed) -> bool:
    """Give back what a request consumed, when it did not go ahead after all.

    Best effort: a lost refund only over-counts (the request failed either way), so a
    failing state store is logged (the request's id and the limits' kinds, never a value
    of the request), not raised.

    Returns:
        Whether the refund was recorded.
    """
    if not consumed.checks:
        return True
    try:
        await state.refund_limits(consumed.checks, consumed.member, consumed.at)
    except Unavailable as exc:
        log.warning(
            "limits not refunded: the state store failed",
            member=consumed.member,
            kinds=sorted({check.kind for check in consumed.checks}),
            error=exc.detail,
        )
        return False
    return True
