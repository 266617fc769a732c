"""Redis down or emptied under a running broker: what still works, and no revocation undone.

A real redis-server of each test's own, stopped and started again by PID: with AOF
persistence (what the chart requires) a restart keeps everything; without it Redis comes
back empty, and the broker must notice and put the agent revocations back.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from broker.config.settings import StateSettings
from broker.state.redis.config import RedisSettings
from tests.support.broker import eventually
from tests.support.devbroker import DevBroker, dev_broker
from tests.support.redis_control import ControlledRedis, controlled_redis

ANALYTICS = "spiffe://example.org/agent/analytics"
SYNC_SECONDS = 0.5


@pytest.fixture
def redis_persistent(tmp_path: Path) -> Iterator[ControlledRedis]:
    """A redis-server with AOF persistence (appendonly yes, fsync always)."""
    with controlled_redis(tmp_path / "redis", persistent=True) as server:
        yield server


@pytest.fixture
def redis_volatile(tmp_path: Path) -> Iterator[ControlledRedis]:
    """A redis-server that keeps nothing across a restart."""
    with controlled_redis(tmp_path / "redis", persistent=False) as server:
        yield server


def redis_state(server: ControlledRedis, prefix: str, **options: Any) -> StateSettings:
    return StateSettings(
        backend="redis",
        options=RedisSettings(
            url=server.url, key_prefix=prefix, sync_seconds=SYNC_SECONDS, **options
        ),
    )


@asynccontextmanager
async def redis_broker(
    directory: Path, server: ControlledRedis, prefix: str = "outage:", **options: Any
) -> AsyncIterator[DevBroker]:
    """The development trust domain served in-process, its state in `server`."""
    async with dev_broker(directory, state=redis_state(server, prefix, **options)) as broker:
        yield broker


async def issue(broker: DevBroker, agent: str = "analytics") -> Any:
    return await broker.agent(agent).credentials({"tools": ["analytics_api"]})


async def revoke(broker: DevBroker, spiffe_id: str) -> None:
    response = await broker.agent("admin").request(
        "POST", "/v1/admin/agents/revoke", json_body={"spiffe_id": spiffe_id}
    )
    assert response.status == 200, response.body


async def claims(broker: DevBroker) -> Any:
    """An agent that was never revoked (it asks on behalf of a user)."""
    return await broker.agent("claims").credentials(
        {"tools": ["customer_data_api"], "user_token": broker.user_token("alice")}
    )


async def redis_has(server: ControlledRedis, key: str) -> bool:
    client = aioredis.Redis.from_url(server.url)
    try:
        return bool(await client.exists(key))
    finally:
        await client.aclose()


# -- Redis down -----------------------------------------------------------------------------------


async def test_redis_down_keeps_public_documents_and_fails_issuance_cleanly(
    tmp_path: Path, redis_persistent: ControlledRedis
) -> None:
    """Redis down: JWKS/discovery 200, issuance 503, /readyz/public 200, /readyz 503; back: 201."""
    async with redis_broker(tmp_path / "dev", redis_persistent) as broker:
        assert (await issue(broker)).status == 201
        redis_persistent.stop()

        anonymous = broker.agent(None)
        jwks = await anonymous.request("GET", "/.well-known/jwks.json")
        assert jwks.status == 200
        assert jwks.body["keys"]
        discovery = await anonymous.request("GET", "/.well-known/openid-configuration")
        assert discovery.status == 200
        assert discovery.body["jwks_uri"].endswith("/.well-known/jwks.json")

        refused = await issue(broker)
        assert refused.status == 503, refused.body
        assert refused.content_type == "application/problem+json"
        assert "state store" in refused.body["detail"]
        assert "credentials" not in refused.body
        assert "Retry-After" in refused.headers

        strict = await anonymous.request("GET", "/readyz")
        assert strict.status == 503
        assert strict.body["checks"]["state"] is False
        public = await anonymous.request("GET", "/readyz/public")  # the chart's readinessProbe
        assert public.status == 200, public.body
        assert public.body == {
            "status": "degraded",
            "checks": {"identity": True, "state": False, "audit": True},
        }

        redis_persistent.start()

        async def issued_again() -> bool:
            return (await issue(broker)).status == 201

        await eventually(issued_again, within=10, interval=0.2)
        assert (await anonymous.request("GET", "/readyz")).status == 200
        ready = await anonymous.request("GET", "/readyz/public")
        assert ready.body["status"] == "ready"


# -- Redis restarted: revocations ----------------------------------------------------------------


async def test_revocation_survives_a_redis_restart_with_persistence(
    tmp_path: Path, redis_persistent: ControlledRedis
) -> None:
    """With `appendonly yes` Redis keeps the revocation itself; nothing is refused or restored."""
    async with redis_broker(tmp_path / "dev", redis_persistent) as broker:
        assert (await issue(broker)).status == 201
        await revoke(broker, ANALYTICS)
        redis_persistent.restart()
        assert (await issue(broker)).status == 401
        assert (await claims(broker)).status == 201  # no data was lost: nothing to refuse
        assert (await broker.agent(None).request("GET", "/readyz")).status == 200


async def test_revocation_survives_a_redis_restart_without_persistence(
    tmp_path: Path, redis_volatile: ControlledRedis
) -> None:
    """Redis comes back empty: the broker notices, refuses, puts the revocation back: still 401."""
    prefix = f"lost{secrets.token_hex(3)}:"
    async with redis_broker(tmp_path / "dev", redis_volatile, prefix) as broker:
        assert (await issue(broker)).status == 201
        await revoke(broker, ANALYTICS)
        assert (await issue(broker)).status == 401
        assert (await claims(broker)).status == 201

        redis_volatile.restart()
        assert not await redis_has(redis_volatile, f"{prefix}revoked-agent:{ANALYTICS}")

        # The first request notices the vanished epoch marker: everyone is refused for a
        # while (other replicas put their copies back meanwhile); revoked agents stay 401.
        refused = await claims(broker)
        assert refused.status == 503, refused.body
        assert refused.content_type == "application/problem+json"
        assert "lost its data" in refused.body["detail"]
        assert (await issue(broker)).status == 401
        strict = await broker.agent(None).request("GET", "/readyz")
        assert strict.status == 503
        assert strict.body["checks"]["state"] is False
        assert (await broker.agent(None).request("GET", "/readyz/public")).status == 200
        assert await redis_has(redis_volatile, f"{prefix}revoked-agent:{ANALYTICS}")

        async def serving_again() -> bool:
            return (await claims(broker)).status == 201

        await eventually(serving_again, within=10, interval=0.2)
        assert (await issue(broker)).status == 401  # the revocation was never undone
        assert (await broker.agent(None).request("GET", "/readyz")).status == 200


async def test_a_replica_puts_back_what_a_departed_replica_revoked(
    tmp_path: Path, redis_volatile: ControlledRedis
) -> None:
    """Revoked on replica A, A gone, Redis emptied: replica B's copy (synced) restores it."""
    prefix = f"pair{secrets.token_hex(3)}:"
    async with AsyncExitStack() as stack:
        replica_b = await stack.enter_async_context(
            redis_broker(tmp_path / "dev", redis_volatile, prefix)
        )
        async with dev_broker(
            tmp_path / "dev",
            state=redis_state(redis_volatile, prefix),
            audit=dataclasses.replace(replica_b.settings.audit, path=tmp_path / "audit-a.log"),
        ) as replica_a:
            assert (await issue(replica_b)).status == 201
            await revoke(replica_a, ANALYTICS)
            assert (await issue(replica_b)).status == 401
            state_b = replica_b.running.runtime.state
            await eventually(
                lambda: state_b._copy.revoked(ANALYTICS, 0), within=5, interval=0.1
            )  # B has read A's revocation from Redis into its own copy
        redis_volatile.restart()

        async def refused() -> bool:
            return (await issue(replica_b)).status == 401

        assert await refused()  # B's own copy answers at once
        # B's next sync notices the vanished marker and writes its copy back.
        key = f"{prefix}revoked-agent:{ANALYTICS}"
        await eventually(lambda: redis_has(redis_volatile, key), within=5, interval=0.1)
        await eventually(lambda: _ready(replica_b), within=10, interval=0.2)
        assert await refused()


async def _ready(broker: DevBroker) -> bool:
    return (await broker.agent(None).request("GET", "/readyz")).status == 200


async def test_revocations_file_restores_after_a_broker_and_redis_restart(
    tmp_path: Path, redis_volatile: ControlledRedis
) -> None:
    """Broker and Redis both restarted, Redis empty: the revocations file puts it back."""
    prefix = f"file{secrets.token_hex(3)}:"
    kept = tmp_path / "revocations.jsonl"
    async with redis_broker(
        tmp_path / "dev", redis_volatile, prefix, revocations_file=kept
    ) as broker:
        await revoke(broker, ANALYTICS)
    assert ANALYTICS in kept.read_text()
    redis_volatile.restart()
    async with redis_broker(
        tmp_path / "dev", redis_volatile, prefix, revocations_file=kept
    ) as restarted:
        assert (await issue(restarted)).status == 401
        assert await redis_has(redis_volatile, f"{prefix}revoked-agent:{ANALYTICS}")
        assert (await claims(restarted)).status == 503  # refused while replicas restore
        await eventually(lambda: _ready(restarted), within=10, interval=0.2)
        assert (await claims(restarted)).status == 201
        assert (await issue(restarted)).status == 401
