"""`broker serve` on uvloop (the `uvloop` extra) and on asyncio: the same answers.

uvloop's TLS transport cannot be weakly referenced: the per-connection client-certificate
cache must not depend on it (it once made every request a 500 under uvloop).
"""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest
import yaml

from broker.clock import SystemClock
from broker.dev.trust_domain import DevTrustDomain, init_trust_domain, mint_jwt_svid
from broker.errors import ConfigError
from broker.eventloop import ENV, loop_name
from tests.support import leaks
from tests.support.broker import BrokerProcess, free_port
from tests.support.devbroker import Agent

pytest.importorskip("uvloop")

ANALYTICS = json.dumps({"tools": ["analytics_api"]})


@pytest.fixture
def td(tmp_path: Path) -> DevTrustDomain:
    trust_domain, _ = init_trust_domain(tmp_path / "dev", None, SystemClock())
    leaks.watch_audit(trust_domain.root)
    return trust_domain


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
async def test_issuance_over_one_kept_alive_connection_on_either_loop(
    td: DevTrustDomain, tmp_path: Path, loop: str
) -> None:
    """Three mTLS issuances on one connection (its chain read once), then a JWT-SVID bearer."""
    port = free_port()
    data = yaml.safe_load(td.config.read_text())
    data["listen"]["port"] = port
    td.config.write_text(yaml.safe_dump(data))
    url = f"https://127.0.0.1:{port}"
    process = BrokerProcess(
        ["serve", "--config", str(td.config)], cwd=tmp_path, env={ENV: loop}
    ).start()
    try:
        process.wait_ready(url, td.ca_bundle)
        agent = Agent(td, url, "analytics")
        connector = aiohttp.TCPConnector(ssl=agent.context(), limit=1)
        async with aiohttp.ClientSession(connector=connector) as session:
            for _ in range(3):
                async with session.post(
                    f"{url}/v1/credentials",
                    data=ANALYTICS,
                    headers={"Content-Type": "application/json"},
                ) as response:
                    body = await response.json()
                    leaks.remember_response(body)
                    assert response.status == 201, body
        token = mint_jwt_svid(
            td,
            agent="analytics",
            audience="spiffe://example.org/broker",
            ttl=300,
            clock=SystemClock(),
        )
        leaks.remember(token)
        bearer = await Agent(td, url, None).request(
            "POST",
            "/v1/credentials",
            json_body={"tools": ["analytics_api"]},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert bearer.status == 201, bearer.body
        listening = [
            json.loads(line)
            for line in process.stderr.splitlines()
            if line.startswith("{") and '"listening"' in line
        ]
        assert listening[0]["event_loop"] == loop
    finally:
        assert process.stop() == 0


def test_the_loop_is_chosen_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    assert loop_name() == "asyncio"  # the default: uvloop measured no faster here
    monkeypatch.setenv(ENV, "auto")
    assert loop_name() == "uvloop"  # installed (a test dependency)
    monkeypatch.setenv(ENV, "uvloop")
    assert loop_name() == "uvloop"
    monkeypatch.setenv(ENV, "trio")
    with pytest.raises(ConfigError, match="must be auto, asyncio or uvloop"):
        loop_name()
