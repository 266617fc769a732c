"""Two broker processes sharing one Redis: revocation and rate limits hold across replicas."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from broker.audit.chain import verify_files
from broker.clock import SystemClock
from broker.dev.trust_domain import DevTrustDomain, init_trust_domain, mint_user_token
from tests.support import leaks
from tests.support.broker import BrokerProcess, free_port
from tests.support.devbroker import Agent
from tests.support.servers import RedisServer


def replica_config(td: DevTrustDomain, name: str, port: int, redis_url: str, prefix: str) -> Path:
    data = yaml.safe_load(td.config.read_text())
    data["listen"]["port"] = port
    data["jwt_issuer"]["issuer"] = "https://broker.example.org"  # one issuer for all replicas
    data["jwt_issuer"]["auto_rotate"] = False  # replicas share keys (a Kubernetes Secret)
    data["state"] = {"backend": "redis", "url": redis_url, "key_prefix": prefix}
    data["audit"]["path"] = f"audit-{name}.log"
    data["audit"]["chain_id"] = name
    path = td.root / f"config-{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def replicas(tmp_path: Path, redis: RedisServer) -> Iterator[tuple[DevTrustDomain, list[str]]]:
    """Replicas a and b of one broker, as real processes, on one Redis."""
    td, _ = init_trust_domain(tmp_path / "dev", None, SystemClock())
    prefix = f"replicas{secrets.token_hex(3)}:"
    processes, urls = [], []
    try:
        for name in ("a", "b"):
            port = free_port()
            config = replica_config(td, name, port, redis.url, prefix)
            process = BrokerProcess(["serve", "--config", str(config)], cwd=tmp_path).start()
            processes.append(process)
            urls.append(f"https://127.0.0.1:{port}")
        for process, url in zip(processes, urls, strict=True):
            process.wait_ready(url, td.ca_bundle)
        yield td, urls
    finally:
        for process in processes:
            process.stop()


def user_token(td: DevTrustDomain, user: str) -> str:
    token = mint_user_token(td, user=user, tier="standard", ttl=600, groups=(), clock=SystemClock())
    leaks.remember(token)
    return token


async def test_rate_limit_of_60_per_minute_holds_across_replicas(
    replicas: tuple[DevTrustDomain, list[str]],
) -> None:
    """70 requests for one user, alternating between replicas: exactly 60 succeed."""
    td, urls = replicas
    token = user_token(td, "zoe")
    agents = [Agent(td, url, "claims") for url in urls]

    async def one(i: int) -> int:
        response = await agents[i % 2].credentials(
            {"tools": ["customer_data_api"], "user_token": token}
        )
        return response.status

    statuses = await asyncio.gather(*(one(i) for i in range(70)))
    assert statuses.count(201) == 60
    assert statuses.count(429) == 10


async def test_revocation_on_one_replica_is_enforced_by_the_other_within_a_second(
    replicas: tuple[DevTrustDomain, list[str]],
) -> None:
    """Revoked on replica a: refused by b at once; b's tokens introspect inactive on a."""
    td, (url_a, url_b) = replicas
    on_b = Agent(td, url_b, "claims")
    issued = await on_b.credentials(
        {"tools": ["customer_data_api"], "user_token": user_token(td, "yan")}
    )
    assert issued.status == 201
    token = issued.body["credentials"][0]["token"]

    revoked = await Agent(td, url_a, "admin").request(
        "POST",
        "/v1/admin/agents/revoke",
        json_body={"spiffe_id": "spiffe://example.org/agent/claims"},
    )
    assert revoked.status == 200
    assert revoked.body["credentials_revoked"] == 1
    started = time.monotonic()
    refused = await on_b.credentials(
        {"tools": ["customer_data_api"], "user_token": user_token(td, "yan")}
    )
    elapsed = time.monotonic() - started
    assert refused.status == 401
    assert elapsed < 1.0
    introspected = await Agent(td, url_a, "admin").request(
        "POST",
        "/v1/introspect",
        data=f"token={token}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert introspected.body == {"active": False}
    # Each replica wrote its own, intact chain.
    for name in ("a", "b"):
        result = verify_files([td.root / f"audit-{name}.log"])
        assert result.ok, result.message
