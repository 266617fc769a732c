"""The limits step: rate limits and budgets, enforced after the policy allowed a request.

The policy only declares which limits apply (each allowing rule's `rate_limits` and
`budgets`, carried on its `ToolGrant`); this step binds them to the request's agent, user
and tool, and consumes them atomically in the shared state store (all or none), so that
"60 per user per minute" holds across replicas. What a failed issuance consumed is
refunded.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from broker.domain import Decision, LimitCheck, RequestContext
from broker.errors import Unavailable
from broker.typing import StateStore

__all__ = ["Consumed", "LimitRefusal", "Limits", "limit_checks"]

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
        if consumed.checks:
            with contextlib.suppress(Unavailable):
                await self._state.refund_limits(consumed.checks, consumed.member, consumed.at)
