"""Gateway budgets: request counts and spend, per agent, per user and per route.

Both are fixed-window budgets in the shared state store (`consume_limits`: atomic across
replicas in Redis, durable in SQLite), so they hold across replicas and restarts.

- Requests: each request consumes 1 from every request budget before it is forwarded.
- Spend (micro-units): the cost is known only after the response (the upstream's
  reported usage times the route's prices). Admission consumes 1 micro-unit from each
  spend budget, which refuses the request once the budget is spent; after the response
  the cost is recorded unconditionally (the same counter, consumed with no ceiling), so
  the last request of a window may overrun it by its own cost, and concurrent requests
  admitted together by theirs. The next request is then refused (429, Retry-After until
  the window ends).
- Refund: a request admitted but then not forwarded (key source or audit sink down, the
  upstream refusing the connection) gets back what its admission took, so that an outage
  does not spend the agents' budgets.
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.domain import LimitCheck, UserRef
from broker.gateway.config import BudgetSettings, RouteSettings
from broker.limits import Consumed, refund
from broker.typing import StateStore

__all__ = ["BudgetRefusal", "Budgets", "Usage"]

NO_USER = "-"
_NO_CEILING = 1 << 62


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens the upstream reported for one request."""

    input_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class BudgetRefusal:
    """The budget that refused a request, and when it admits again."""

    kind: str  # `requests` or `spend`
    retry_after: int


def _key(route: RouteSettings, budget: BudgetSettings, kind: str, agent: str, user: str) -> str:
    bound = {"agent": f"agent={agent}", "user": f"user={user}", "route": "route"}[budget.per]
    return f"gateway|{route.name}|{kind}|{budget.per}|{budget.window_seconds}|{bound}"


class Budgets:
    """Consumes gateway budgets in the shared state store."""

    def __init__(self, state: StateStore) -> None:
        """Wire the state store."""
        self._state = state

    async def admit(
        self, route: RouteSettings, agent: str, user: UserRef | None, member: str, now: float
    ) -> tuple[Consumed, BudgetRefusal | None]:
        """Count the request against every request budget, and check every spend budget.

        Returns:
            What was consumed (for `refund`), and the refusal when a budget is exhausted
            (then nothing was consumed).

        Raises:
            Unavailable: The state store failed (nothing consumed).
        """
        who = str(user) if user else NO_USER
        checks: list[LimitCheck] = []
        kinds: dict[str, str] = {}
        for budget in route.budgets:
            for kind, limit in (("requests", budget.requests), ("spend", budget.spend_micros)):
                if limit is None:
                    continue
                key = _key(route, budget, kind, agent, who)
                kinds[key] = kind
                checks.append(LimitCheck("gateway", "budget", key, limit, budget.window_seconds))
        consumed = Consumed(tuple(checks), member, now)
        if not checks:
            return consumed, None
        result = await self._state.consume_limits(checks, member, now)
        if result.allowed:
            return consumed, None
        refusal = BudgetRefusal(kinds.get(result.key or "", "requests"), result.retry_after)
        return Consumed((), member, now), refusal

    async def refund(self, consumed: Consumed) -> bool:
        """Give back what `admit` took, for a request that was not forwarded after all.

        Never raises: a failing state store is logged (the budgets then over-count).

        Returns:
            Whether the refund was recorded.
        """
        return await refund(self._state, consumed)

    async def record_spend(
        self,
        *,
        route: RouteSettings,
        agent: str,
        user: UserRef | None,
        member: str,
        cost: int,
        now: float,
    ) -> None:
        """Add a completed request's cost to every spend budget (no ceiling: it happened).

        Raises:
            Unavailable: The state store failed.
        """
        who = str(user) if user else NO_USER
        checks = [
            LimitCheck(
                "gateway",
                "budget",
                _key(route, budget, "spend", agent, who),
                _NO_CEILING,
                budget.window_seconds,
                cost,
            )
            for budget in route.budgets
            if budget.spend_micros is not None
        ]
        if checks and cost > 0:
            await self._state.consume_limits(checks, member, now)


def cost_of(route: RouteSettings, model: str | None, usage: Usage | None) -> int | None:
    """The cost in micro-units of `usage` at the route's price for `model`, if priced."""
    if usage is None or model is None:
        return None
    price = route.prices.get(model)
    if price is None:
        return None
    return usage.input_tokens * price.input_micros + usage.output_tokens * price.output_micros
