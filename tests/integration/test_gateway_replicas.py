"""The gateway on two broker replicas sharing one real Redis: budgets hold across them.

Two brokers of one trust domain, each with its own gateway listener (real TLS), audit
chain and connections to one redis-server, as two replicas behind a Service would be.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from broker.audit.chain import verify_files
from broker.dev.trust_domain import DevTrustDomain
from tests.support import leaks
from tests.support.gateway import GatewayEnv, gateway_settings, gateway_trust_domain, serve_gateway
from tests.support.servers import RedisServer
from tests.support.upstream import Upstream, local_upstream

BUDGET = 5  # requests per agent per window, for both replicas together
KEY = "sk-replicas-" + secrets.token_hex(8)


@asynccontextmanager
async def replica(
    td: DevTrustDomain, upstream: Upstream, redis: RedisServer, prefix: str, name: str
) -> AsyncIterator[GatewayEnv]:
    """Replica `name`: its own audit chain, Redis state under the replicas' shared prefix."""
    settings = gateway_settings(
        td,
        upstream,
        name=f"config-{name}.yaml",
        overrides={
            "state": {"backend": "redis", "url": redis.url, "key_prefix": prefix, "path": None},
            "audit": {"path": f"audit.log.{name}", "chain_id": name},
            # One issuer and one key set for all replicas (a shared Kubernetes Secret).
            "jwt_issuer": {"issuer": "https://broker.example.org", "auto_rotate": False},
        },
        budgeted={
            "tool": "analytics_api",
            "upstream": upstream.url,
            "key": {"source": "file", "file": str(td.root / "upstream.key")},
            "methods": ["POST"],
            "budgets": [{"per": "agent", "window_seconds": 86400, "requests": BUDGET}],
        },
    )
    async with serve_gateway(td, settings, upstream) as env:
        yield env


@pytest.fixture
def td(tmp_path: Path) -> DevTrustDomain:
    """The replicas' trust domain (their audit chains `audit.log.NAME`, scanned for leaks)."""
    leaks.remember(KEY)
    return gateway_trust_domain(tmp_path / "dev")


async def call(env: GatewayEnv, token: str) -> int:
    async with (
        env.session() as session,
        session.post(
            f"{env.url}/budgeted/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": []},
            headers={"Authorization": f"Bearer {token}"},
        ) as response,
    ):
        await response.read()
        if response.status == 429:
            assert int(response.headers["Retry-After"]) > 0
        return response.status


async def test_request_budget_holds_across_replicas_and_a_restart(
    td: DevTrustDomain, redis: RedisServer
) -> None:
    """N per window, 2N calls over two replicas: N forwarded, N audited 429s; a restart keeps it."""
    prefix = f"gw{secrets.token_hex(3)}:"
    async with local_upstream(KEY) as upstream:
        async with (
            replica(td, upstream, redis, prefix, "a") as a,
            replica(td, upstream, redis, prefix, "b") as b,
        ):
            token = await a.credential()  # issued by a, verified by both (shared state)
            statuses = await asyncio.gather(
                *(call((a, b)[i % 2], token) for i in range(2 * BUDGET))
            )
            assert sorted(statuses) == [200] * BUDGET + [429] * BUDGET
            assert len(upstream.seen) == BUDGET
            refusals = [
                r
                for env in (a, b)
                for r in await env.settled_records("gateway.request")
                if r["gateway"]["status"] == 429
            ]
            assert len(refusals) == BUDGET
            assert all(r["decision"] == "deny" for r in refusals)
            assert all(r["reasons"] == ["budget_exhausted:requests"] for r in refusals)
        # Both replicas stopped; one comes back, a new broker process state but the same
        # Redis: the window's budget is still spent.
        async with replica(td, upstream, redis, prefix, "a") as again:
            assert await call(again, token) == 429
            assert (await again.settled_records("gateway.request"))[-1]["reasons"] == [
                "budget_exhausted:requests"
            ]
    assert len(upstream.seen) == BUDGET
    for name in ("a", "b"):
        result = verify_files([td.root / f"audit.log.{name}"])
        assert result.ok, result.message


async def test_audit_sink_down_on_one_replica_spends_no_budget(
    td: DevTrustDomain, redis: RedisServer
) -> None:
    """Replica b cannot write its pre-forward audit record: 503s that leave the budget whole."""
    prefix = f"gw{secrets.token_hex(3)}:"
    full = td.root / "audit.log.b"
    full.symlink_to("/dev/full")  # every write of b's audit sink fails: a full disk
    try:
        async with (
            local_upstream(KEY) as upstream,
            replica(td, upstream, redis, prefix, "a") as a,
            replica(td, upstream, redis, prefix, "b") as b,
        ):
            token = await a.credential()
            assert [await call(b, token) for _ in range(BUDGET)] == [503] * BUDGET
            assert len(upstream.seen) == 0
            assert [await call(a, token) for _ in range(BUDGET + 1)] == [200] * BUDGET + [429]
            assert len(upstream.seen) == BUDGET
    finally:
        full.unlink()
