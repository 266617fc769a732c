"""The state store contract, run against every implementation: SQLite and a real Redis.

Failure: the real backend fails under a started store (SQLite: its connection is closed
under it, so SQLite itself refuses every statement; Redis: a dedicated redis-server is
killed). Every I/O method then raises `Unavailable` and `ping()` answers False.

`agent_revoked` is the one read SQLite answers from memory (documented in the store: one
process, so the mirror is authoritative). The contract therefore says: during an outage
it either raises `Unavailable` or still reports every revocation recorded before the
outage; it never answers "not revoked" for an agent that was revoked.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from broker.domain import LimitCheck, UserRef
from broker.errors import Unavailable
from broker.state.base import APPROVAL_MEMORY_SECONDS, ApprovalRecord, CredentialRecord
from broker.state.redis.store import RedisStateStore
from broker.state.sqlite import SqliteStateStore
from broker.typing import StateStore
from tests.support.clock import ManualClock
from tests.support.faults import crash_server
from tests.support.servers import RedisServer, redis_server
from tests.support.stores import STORE_KINDS, open_store


@pytest.fixture(params=STORE_KINDS)
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock, redis: RedisServer
) -> AsyncIterator[StateStore]:
    """Each implementation, fresh (Redis: a key prefix of its own)."""
    async with open_store(request.param, tmp_path, clock, redis) as opened:
        yield opened


def record(
    clock: ManualClock,
    cid: str = "c1",
    *,
    agent: str = "spiffe://example.org/agent/a",
    ttl: float = 300,
    lease: str | None = None,
) -> CredentialRecord:
    now = clock.time()
    return CredentialRecord(
        cid,
        "crm",
        "vault" if lease else "jwt",
        agent,
        UserRef("idp", "alice"),
        "d1",
        now,
        now + ttl,
        lease_id=lease,
        scope="crm:read",
        audience="https://crm",
    )


def approval(clock: ManualClock, aid: str = "a1", *, lapses_in: float = 900) -> ApprovalRecord:
    now = clock.time()
    return ApprovalRecord(
        aid,
        "d1",
        "spiffe://example.org/agent/a",
        UserRef("idp", "alice"),
        ("crm", "tickets"),
        60,
        now,
        now + lapses_in,
        user_tier="gold",
        user_groups=("g",),
        user_expires_at=now + 600,
        actors=("spiffe://example.org/agent/first",),
    )


def rate(key: str, limit: int, window: int = 60, cost: int = 1) -> LimitCheck:
    return LimitCheck("r", "rate", key, limit, window, cost)


def budget(key: str, limit: int, window: int = 3600, cost: int = 1) -> LimitCheck:
    return LimitCheck("r", "budget", key, limit, window, cost)


async def test_ping(store: StateStore) -> None:
    """A started store answers."""
    assert await store.ping()


async def test_credentials_are_remembered_until_expiry(
    store: StateStore, clock: ManualClock
) -> None:
    """put/get round-trips; an expired credential is unknown."""
    await store.put_credentials([record(clock, "c1"), record(clock, "short", ttl=5)])
    assert await store.get_credential("c1") == record(clock, "c1")
    assert await store.get_credential("nope") is None
    clock.advance(6)
    assert await store.get_credential("short") is None
    assert (await store.get_credential("c1")) is not None


async def test_revocation_of_a_credential(store: StateStore, clock: ManualClock) -> None:
    """Revoking marks it (keeping it until expiry); unknown ids revoke nothing."""
    await store.put_credentials([record(clock, "c1")])
    revoked = await store.revoke_credential("c1")
    assert revoked is not None
    assert revoked.revoked
    current = await store.get_credential("c1")
    assert current is not None
    assert current.revoked
    assert await store.revoke_credential("unknown") is None


async def test_live_credentials_of_an_agent(store: StateStore, clock: ManualClock) -> None:
    """Only the agent's unexpired credentials are listed."""
    await store.put_credentials(
        [
            record(clock, "a1"),
            record(clock, "a2", ttl=5),
            record(clock, "b1", agent="spiffe://example.org/agent/b"),
        ]
    )
    clock.advance(6)
    listed = await store.agent_credentials("spiffe://example.org/agent/a")
    assert [r.credential_id for r in listed] == ["a1"]


async def test_agent_revocation(store: StateStore, clock: ManualClock) -> None:
    """A revoked agent is refused until its revocation expires (real time for Redis)."""
    agent = "spiffe://example.org/agent/rogue"
    assert not await store.agent_revoked(agent)
    await store.revoke_agent(agent, time.time() + 0.5)
    assert await store.agent_revoked(agent)
    assert not await store.agent_revoked("spiffe://example.org/agent/other")
    clock.advance(1)
    await asyncio.sleep(0.7)
    assert not await store.agent_revoked(agent)


async def test_sliding_window_rate_limit(store: StateStore) -> None:
    """3 per 60 s: the 4th is refused with the right Retry-After; later it is admitted."""
    now = time.time()
    check = rate("k1", 3)
    for i in range(3):
        assert (await store.consume_limits([check], f"m{i}", now + i)).allowed
    refused = await store.consume_limits([check], "m3", now + 10)
    assert not refused.allowed
    assert refused.kind == "rate"
    assert refused.key == "k1"
    assert refused.retry_after == 50  # the oldest event leaves the window at now + 60
    assert (await store.consume_limits([check], "m4", now + 60.5)).allowed


async def test_limits_are_all_or_nothing(store: StateStore) -> None:
    """If one limit refuses, the others are not consumed."""
    now = time.time()
    roomy, tight = rate("roomy", 10), rate("tight", 1)
    assert (await store.consume_limits([tight], "first", now)).allowed
    refused = await store.consume_limits([roomy, tight], "second", now)
    assert not refused.allowed
    assert refused.key == "tight"
    for i in range(10):
        assert (await store.consume_limits([roomy], f"r{i}", now)).allowed  # all 10 still free


async def test_cost_counts_several_credentials(store: StateStore) -> None:
    """A two-tool request costs two."""
    now = time.time()
    check = rate("cost", 3, cost=2)
    assert (await store.consume_limits([check], "a", now)).allowed
    assert not (await store.consume_limits([check], "b", now)).allowed


async def test_fixed_window_budget_and_refund(store: StateStore) -> None:
    """A budget refuses until its window ends; a refund gives back what was taken."""
    start = (int(time.time()) // 3600) * 3600 + 100.0
    check = budget("b1", 2)
    assert (await store.consume_limits([check], "a", start)).allowed
    assert (await store.consume_limits([check], "b", start)).allowed
    refused = await store.consume_limits([check], "c", start + 10)
    assert not refused.allowed
    assert refused.kind == "budget"
    assert refused.retry_after == 3600 - 110
    await store.refund_limits([check], "b", start + 10)
    assert (await store.consume_limits([check], "c", start + 11)).allowed
    rate_check = rate("r-refund", 1)
    assert (await store.consume_limits([rate_check], "x", start)).allowed
    await store.refund_limits([rate_check], "x", start)
    assert (await store.consume_limits([rate_check], "y", start)).allowed


async def test_refund_never_gives_more_than_was_taken(store: StateStore) -> None:
    """Refunding twice, or what was never consumed, admits no more than the limit."""
    now = (int(time.time()) // 3600) * 3600 + 100.0
    check = budget("b-over", 2)
    await store.refund_limits([check, rate("r-over", 1)], "never-consumed", now)
    assert (await store.consume_limits([check], "a", now)).allowed
    await store.refund_limits([check], "a", now)
    await store.refund_limits([check], "a", now)
    for member in ("b", "c"):
        assert (await store.consume_limits([check], member, now)).allowed
    assert not (await store.consume_limits([check], "d", now)).allowed
    assert (await store.consume_limits([rate("r-over", 1)], "e", now)).allowed
    assert not (await store.consume_limits([rate("r-over", 1)], "f", now)).allowed


async def test_first_use_detects_replays(store: StateStore, clock: ManualClock) -> None:
    """A key is new once; after its expiry it is new again."""
    assert await store.first_use("jti-1", time.time() + 0.5)
    assert not await store.first_use("jti-1", time.time() + 0.5)
    clock.advance(1)  # SQLite follows the injected clock, Redis the wall clock
    await asyncio.sleep(0.7)
    assert await store.first_use("jti-1", time.time() + 1)


async def test_leases_to_release(store: StateStore, clock: ManualClock) -> None:
    """Expired or revoked leases are listed until released; plain JWTs never are."""
    await store.put_credentials(
        [
            record(clock, "lease-expiring", ttl=5, lease="database/creds/x/1"),
            record(clock, "lease-live", lease="database/creds/x/2"),
            record(clock, "jwt", ttl=5),
        ]
    )
    assert await store.leases_to_release(clock.time()) == []
    await store.revoke_credential("lease-live")
    assert [r.credential_id for r in await store.leases_to_release(clock.time())] == ["lease-live"]
    clock.advance(6)
    due = sorted(r.credential_id for r in await store.leases_to_release(clock.time()))
    assert due == ["lease-expiring", "lease-live"]
    await store.lease_released("lease-live")
    await store.lease_released("lease-expiring")
    assert await store.leases_to_release(clock.time()) == []


async def test_sqlite_survives_a_restart_and_purges(tmp_path: Path, clock: ManualClock) -> None:
    """The embedded store keeps state across a restart and deletes what expired."""
    path = tmp_path / "state.db"
    first = SqliteStateStore(path, clock)
    await first.start()
    await first.put_credentials([record(clock, "keep"), record(clock, "gone", ttl=5)])
    await first.revoke_agent("spiffe://example.org/agent/x", clock.time() + 100)
    await first.close()
    second = SqliteStateStore(path, clock)
    await second.start()
    try:
        assert await second.get_credential("keep") is not None
        assert await second.agent_revoked("spiffe://example.org/agent/x")
        clock.advance(10)
        await second.purge()
        count = second._read(
            lambda db: db.execute("SELECT count(*) FROM credentials").fetchone()[0]
        )
        assert count == 1
    finally:
        await second.close()


async def test_redis_keys_all_expire(redis: RedisServer, clock: ManualClock) -> None:
    """Every key the Redis store writes has an expiry: nothing grows without bound."""
    prefix = f"exp{secrets.token_hex(4)}:"
    store = RedisStateStore(redis.url, clock, prefix=prefix)
    await store.start()
    now = time.time()
    await store.put_credentials([record(clock, "c1"), record(clock, "l1", lease="db/creds/r/1")])
    await store.revoke_agent("spiffe://example.org/agent/x", now + 100)
    await store.consume_limits([rate("k", 5), budget("b", 5)], "m", now)
    await store.refund_limits([budget("refunded-unconsumed", 5)], "m", now)
    await store.first_use("j", now + 100)
    await store.put_approval(approval(clock))
    await store.set_approval_status("a1", expected="pending", status="approved")
    await store.close()
    client = aioredis.Redis.from_url(redis.url)
    keys = [k async for k in client.scan_iter(f"{prefix}*")]
    assert len(keys) >= 8
    for key in keys:
        assert await client.ttl(key) > 0, key
    # Kept (through the status change) until a day after it lapses: 410, not 404.
    assert await client.ttl(f"{prefix}approval:a1") > APPROVAL_MEMORY_SECONDS + 800
    await client.aclose()


async def test_concurrent_writes_all_succeed(store: StateStore, clock: ManualClock) -> None:
    """Thousands of concurrent writes (as under load) succeed; none races another."""
    now = time.time()

    async def one(i: int) -> None:
        await store.consume_limits([rate(f"k{i % 7}", 10_000)], f"m{i}", now)
        await store.put_credentials([record(clock, f"c{i}")])
        await store.revoke_credential(f"c{i}")

    await asyncio.gather(*(one(i) for i in range(1500)))
    assert len(await store.agent_credentials("spiffe://example.org/agent/a")) == 1500


async def test_approvals_round_trip(store: StateStore, clock: ManualClock) -> None:
    """put/get returns the very record (timestamps to the microsecond); unknown ids are None."""
    record = approval(clock)
    await store.put_approval(record)
    assert await store.get_approval("a1") == record
    assert await store.get_approval("unknown") is None


async def test_approval_status_is_a_compare_and_set(store: StateStore, clock: ManualClock) -> None:
    """A move succeeds from `expected` only; approver and reason stay when not given."""
    await store.put_approval(approval(clock))
    approved = await store.set_approval_status(
        "a1", expected="pending", status="approved", approver="spiffe://td/admin", reason="ok"
    )
    assert approved == dataclasses.replace(
        approval(clock), status="approved", approver="spiffe://td/admin", reason="ok"
    )
    assert await store.get_approval("a1") == approved
    stale = await store.set_approval_status("a1", expected="pending", status="denied")
    assert stale is None
    assert await store.get_approval("a1") == approved
    issued = await store.set_approval_status("a1", expected="approved", status="issued")
    assert issued == dataclasses.replace(approved, status="issued")
    assert await store.set_approval_status("unknown", expected="pending", status="x") is None
    assert await store.get_approval("unknown") is None


async def test_concurrent_compare_and_set_has_one_winner(
    store: StateStore, clock: ManualClock
) -> None:
    """10 concurrent approved->issued moves: exactly one wins (credentials collected once)."""
    await store.put_approval(approval(clock))
    await store.set_approval_status("a1", expected="pending", status="approved")
    claims = await asyncio.gather(
        *(store.set_approval_status("a1", expected="approved", status="issued") for _ in range(10))
    )
    assert sum(c is not None for c in claims) == 1
    current = await store.get_approval("a1")
    assert current is not None
    assert current.status == "issued"


async def test_approvals_are_kept_a_day_after_they_lapse(
    store: StateStore, clock: ManualClock
) -> None:
    """A lapsed approval is still known (410, not 404); one lapsed over a day ago is not."""
    await store.put_approval(approval(clock, "lapsed", lapses_in=-10))
    expired = await store.set_approval_status("lapsed", expected="pending", status="expired")
    assert expired is not None
    assert await store.get_approval("lapsed") == expired
    await store.put_approval(approval(clock, "old", lapses_in=-APPROVAL_MEMORY_SECONDS - 5))
    assert await store.get_approval("old") is None
    assert await store.set_approval_status("old", expected="pending", status="expired") is None


async def test_redis_approval_has_one_winner_across_replicas(
    redis: RedisServer, clock: ManualClock
) -> None:
    """Two stores on one Redis (two replicas) race to collect one approval: one wins."""
    prefix = f"race{secrets.token_hex(4)}:"
    replicas = [RedisStateStore(redis.url, clock, prefix=prefix) for _ in range(2)]
    for replica in replicas:
        await replica.start()
    try:
        await replicas[0].put_approval(approval(clock))
        assert await replicas[1].set_approval_status("a1", expected="pending", status="approved")
        claims = await asyncio.gather(
            *(
                replicas[i % 2].set_approval_status("a1", expected="approved", status="issued")
                for i in range(10)
            )
        )
        assert sum(c is not None for c in claims) == 1
    finally:
        for replica in replicas:
            await replica.close()


REVOKED_BEFORE = "spiffe://example.org/agent/revoked-before-the-outage"


@pytest.fixture(params=["sqlite", "redis"])
async def failed_store(
    request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock
) -> AsyncIterator[StateStore]:
    """Each implementation, started and working, then its backend failed under it."""
    implementation: StateStore
    if request.param == "sqlite":
        implementation = SqliteStateStore(tmp_path / "state.db", clock)
        await implementation.start()
        await implementation.revoke_agent(REVOKED_BEFORE, clock.time() + 600)
        assert await implementation.ping()
        db = implementation._db
        assert db is not None
        db.close()  # SQLite itself now refuses every statement on this connection
        yield implementation
        await implementation.close()
        return
    # A redis-server of its own: the session-wide one must survive this test.
    with redis_server(tmp_path / "redis") as server:
        implementation = RedisStateStore(server.url, clock, prefix="f:", timeout_seconds=0.5)
        await implementation.start()
        await implementation.revoke_agent(REVOKED_BEFORE, time.time() + 600)
        assert await implementation.ping()
        crash_server(server.pid, server.port)
        yield implementation
        await implementation.close()


async def test_backend_failure_is_unavailable_and_not_ready(
    failed_store: StateStore, clock: ManualClock
) -> None:
    """Backend down: every I/O method raises Unavailable promptly; ping() is False."""
    now = time.time()
    check = rate("k", 5)
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "put_credentials": lambda: failed_store.put_credentials([record(clock, "c1")]),
        "get_credential": lambda: failed_store.get_credential("c1"),
        "revoke_credential": lambda: failed_store.revoke_credential("c1"),
        "agent_credentials": lambda: failed_store.agent_credentials("spiffe://example.org/agent/a"),
        "revoke_agent": lambda: failed_store.revoke_agent("spiffe://example.org/agent/b", now + 60),
        "consume_limits": lambda: failed_store.consume_limits([check], "m", now),
        "refund_limits": lambda: failed_store.refund_limits([check], "m", now),
        "first_use": lambda: failed_store.first_use("jti", now + 60),
        "leases_to_release": lambda: failed_store.leases_to_release(now),
        "lease_released": lambda: failed_store.lease_released("c1"),
        "put_approval": lambda: failed_store.put_approval(approval(clock)),
        "get_approval": lambda: failed_store.get_approval("a1"),
        "set_approval_status": lambda: failed_store.set_approval_status(
            "a1", expected="pending", status="approved"
        ),
    }
    started = time.monotonic()
    for name, call in calls.items():
        try:
            await call()
        except Unavailable:
            continue
        pytest.fail(f"{name} returned instead of raising Unavailable")
    assert time.monotonic() - started < 10
    assert await failed_store.ping() is False
    # The one read SQLite answers from memory: Unavailable, or the revocation still holds.
    try:
        revoked = await failed_store.agent_revoked(REVOKED_BEFORE)
    except Unavailable:
        return
    assert revoked is True
