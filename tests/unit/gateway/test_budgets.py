"""Gateway budgets in the real state stores (SQLite, Redis): counts, spend, windows, restart."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog

from broker.domain import UserRef
from broker.gateway.budgets import Budgets
from broker.gateway.config import (
    BudgetSettings,
    KeySourceSettings,
    Price,
    RouteSettings,
    TokenHeader,
)
from broker.state.sqlite import SqliteStateStore
from broker.typing import StateStore
from tests.support.clock import ManualClock
from tests.support.servers import RedisServer
from tests.support.stores import STORE_KINDS, open_store

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


@pytest.fixture(params=STORE_KINDS)
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock, redis: RedisServer
) -> AsyncIterator[StateStore]:
    """Each state store."""
    async with open_store(request.param, tmp_path, clock, redis) as opened:
        yield opened


async def test_request_budget_per_user(store: StateStore, clock: ManualClock) -> None:
    """Two requests per user per window: the third is refused until the window ends."""
    budgets = Budgets(store)
    limited = route(BudgetSettings("user", 60, requests=2))
    now = clock.time()
    assert (await budgets.admit(limited, AGENT, USER, "r1", now))[1] is None
    assert (await budgets.admit(limited, AGENT, USER, "r2", now))[1] is None
    refused, refusal = await budgets.admit(limited, AGENT, USER, "r3", now)
    assert refusal is not None
    assert refusal.kind == "requests"
    assert 1 <= refusal.retry_after <= 60
    assert refused.checks == ()  # a refused request consumed nothing: nothing to refund
    bob = UserRef("https://idp", "bob")
    assert (await budgets.admit(limited, AGENT, bob, "r4", now))[1] is None
    assert (await budgets.admit(limited, AGENT, USER, "r5", now + 61))[1] is None


async def test_spend_budget_refuses_once_spent(store: StateStore, clock: ManualClock) -> None:
    """Recorded spend (even beyond the budget) refuses the next request for the window."""
    budgets = Budgets(store)
    metered = route(BudgetSettings("agent", 3600, spend_micros=1000))
    now = clock.time()
    assert (await budgets.admit(metered, AGENT, None, "r1", now))[1] is None
    await budgets.record_spend(
        route=metered, agent=AGENT, user=None, member="r1", cost=1500, now=now
    )
    _, refusal = await budgets.admit(metered, AGENT, None, "r2", now)
    assert refusal is not None
    assert refusal.kind == "spend"
    other = "spiffe://example.org/agent/b"
    assert (await budgets.admit(metered, other, None, "r3", now))[1] is None


async def test_refund_gives_back_every_budget(store: StateStore, clock: ManualClock) -> None:
    """A refunded admission (request and reserved spend) leaves the budgets as they were."""
    budgets = Budgets(store)
    both = route(
        BudgetSettings("agent", 3600, requests=1), BudgetSettings("route", 60, spend_micros=1)
    )
    now = clock.time()
    consumed, refusal = await budgets.admit(both, AGENT, None, "r1", now)
    assert refusal is None
    assert await budgets.refund(consumed)
    assert await budgets.refund(consumed)  # a second refund never creates credit
    assert (await budgets.admit(both, AGENT, None, "r2", now))[1] is None
    assert (await budgets.admit(both, AGENT, None, "r3", now))[1] is not None


async def test_failed_refund_is_logged_not_raised(tmp_path: Path, clock: ManualClock) -> None:
    """The state store failing under a refund: False and a warning, never an exception."""
    store = SqliteStateStore(tmp_path / "s.db", clock)
    await store.start()
    budgets = Budgets(store)
    consumed, _ = await budgets.admit(
        route(BudgetSettings("agent", 60, requests=5)), AGENT, USER, "r1", clock.time()
    )
    db = store._db
    assert db is not None
    db.close()  # SQLite itself now refuses every statement
    try:
        with structlog.testing.capture_logs() as logs:
            assert await budgets.refund(consumed) is False
    finally:
        await store.close()
    warning = next(e for e in logs if e["event"].startswith("limits not refunded"))
    assert warning["member"] == "r1"
    assert "alice" not in repr(warning)


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
        _, refusal = await Budgets(second).admit(metered, AGENT, None, "r2", clock.time())
        assert refusal is not None
    finally:
        await second.close()
