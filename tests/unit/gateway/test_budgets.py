"""Gateway budgets in the real state stores (SQLite, Redis): counts, spend, windows, restart."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from broker.domain import UserRef
from broker.gateway.budgets import Budgets
from broker.gateway.config import (
    BudgetSettings,
    KeySourceSettings,
    Price,
    RouteSettings,
    TokenHeader,
)
from broker.state.redis import RedisStateStore
from broker.state.sqlite import SqliteStateStore
from broker.typing import StateStore
from tests.support.clock import ManualClock
from tests.support.servers import RedisServer

AGENT = "spiffe://example.org/agent/a"
USER = UserRef("https://idp", "alice")


def route(*budgets: BudgetSettings) -> RouteSettings:
    return RouteSettings(
        "llm",
        "t",
        "https://u",
        TokenHeader.AUTHORIZATION,
        KeySourceSettings("file", "k"),
        frozenset({"POST"}),
        ("/",),
        prices={"m": Price(1, 1)},
        budgets=budgets,
    )


@pytest.fixture(params=["sqlite", "redis"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock, redis: RedisServer
) -> AsyncIterator[StateStore]:
    """Each state store."""
    implementation: StateStore
    if request.param == "sqlite":
        implementation = SqliteStateStore(tmp_path / "state.db", clock)
    else:
        implementation = RedisStateStore(redis.url, clock, prefix=f"g{secrets.token_hex(4)}:")
    await implementation.start()
    yield implementation
    await implementation.close()


async def test_request_budget_per_user(store: StateStore, clock: ManualClock) -> None:
    """Two requests per user per window: the third is refused until the window ends."""
    budgets = Budgets(store)
    limited = route(BudgetSettings("user", 60, requests=2))
    now = clock.time()
    assert await budgets.admit(limited, AGENT, USER, "r1", now) is None
    assert await budgets.admit(limited, AGENT, USER, "r2", now) is None
    refusal = await budgets.admit(limited, AGENT, USER, "r3", now)
    assert refusal is not None
    assert refusal.kind == "requests"
    assert 1 <= refusal.retry_after <= 60
    assert await budgets.admit(limited, AGENT, UserRef("https://idp", "bob"), "r4", now) is None
    assert await budgets.admit(limited, AGENT, USER, "r5", now + 61) is None


async def test_spend_budget_refuses_once_spent(store: StateStore, clock: ManualClock) -> None:
    """Recorded spend (even beyond the budget) refuses the next request for the window."""
    budgets = Budgets(store)
    metered = route(BudgetSettings("agent", 3600, spend_micros=1000))
    now = clock.time()
    assert await budgets.admit(metered, AGENT, None, "r1", now) is None
    await budgets.record_spend(
        route=metered, agent=AGENT, user=None, member="r1", cost=1500, now=now
    )
    refusal = await budgets.admit(metered, AGENT, None, "r2", now)
    assert refusal is not None
    assert refusal.kind == "spend"
    assert await budgets.admit(metered, "spiffe://example.org/agent/b", None, "r3", now) is None


async def test_spend_survives_a_restart(tmp_path: Path, clock: ManualClock) -> None:
    """SQLite: spend recorded before a restart still refuses after it."""
    metered = route(BudgetSettings("route", 3600, spend_micros=10))
    first = SqliteStateStore(tmp_path / "s.db", clock)
    await first.start()
    await Budgets(first).record_spend(
        route=metered, agent=AGENT, user=None, member="r1", cost=50, now=clock.time()
    )
    await first.close()
    second = SqliteStateStore(tmp_path / "s.db", clock)
    await second.start()
    try:
        assert await Budgets(second).admit(metered, AGENT, None, "r2", clock.time()) is not None
    finally:
        await second.close()
