"""`broker serve --workers 2`: two processes on one port, one audit chain each, shared state."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from broker.clock import SystemClock
from broker.dev.trust_domain import DevTrustDomain, init_trust_domain
from broker.state.sqlite import SqliteStateStore
from tests.support import leaks
from tests.support.broker import BrokerProcess, free_port
from tests.support.devbroker import Agent

ANALYTICS = {"tools": ["analytics_api"]}


@pytest.fixture
def td(tmp_path: Path) -> DevTrustDomain:
    trust_domain, _ = init_trust_domain(tmp_path / "dev", None, SystemClock())
    leaks.watch_audit(trust_domain.root)
    return trust_domain


def configure(td: DevTrustDomain, port: int) -> Path:
    data = yaml.safe_load(td.config.read_text())
    data["listen"]["port"] = port
    td.config.write_text(yaml.safe_dump(data))
    return td.config


def metric_samples(text: str) -> dict[str, float]:
    """`name{labels}` -> value, labels sorted (the exposition's own order may differ)."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}"] = sample.value
    return out


def audit_records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def test_two_workers_share_the_port_state_and_keys(
    td: DevTrustDomain, tmp_path: Path
) -> None:
    """Requests spread over both workers; each writes its own chain; a revocation holds on both."""
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    config = configure(td, port)
    process = BrokerProcess(["serve", "--config", str(config), "--workers", "2"], cwd=tmp_path)
    process.start()
    try:
        process.wait_ready(url, td.ca_bundle)
        process.wait_listening(2)
        analytics = Agent(td, url, "analytics")
        for _ in range(24):  # a new connection each: SO_REUSEPORT spreads them
            assert (await analytics.credentials(ANALYTICS)).status == 201
        chains = [td.root / "audit.w0.log", td.root / "audit.w1.log"]
        assert all(p.exists() for p in chains), process.stderr[-3000:]
        issued = [
            [r for r in audit_records(p) if r["event"] == "credential.issued"] for p in chains
        ]
        assert all(issued), "both workers served requests"
        assert sum(len(i) for i in issued) == 24
        assert {r["chain"] for r in issued[0]} != {r["chain"] for r in issued[1]}

        # /metrics, whichever worker answers the scrape, counts both workers' issuances.
        for _ in range(6):  # a new connection each: both workers answer some scrapes
            scrape = await Agent(td, url, None).request("GET", "/metrics")
            assert scrape.status == 200
            samples = metric_samples(str(scrape.body))
            assert samples['broker_worker_up{worker="0"}'] == 1
            assert samples['broker_worker_up{worker="1"}'] == 1
            issued_total = sum(
                value
                for name, value in samples.items()
                if name.startswith("broker_credentials_issued_total{")
            )
            assert issued_total == 24

        # One JWKS: both workers sign with keys of the one key file.
        jwks = {
            json.dumps((await Agent(td, url, None).request("GET", "/.well-known/jwks.json")).body)
            for _ in range(8)
        }
        assert len(jwks) == 1

        admin = Agent(td, url, "admin")
        revoked = await admin.request(
            "POST",
            "/v1/admin/agents/revoke",
            json_body={"spiffe_id": "spiffe://example.org/agent/analytics"},
        )
        assert revoked.status == 200
        statuses = [(await analytics.credentials(ANALYTICS)).status for _ in range(12)]
        assert statuses == [401] * 12  # whichever worker answers
    finally:
        assert process.stop() == 0

    verify = subprocess.run(
        [sys.executable, "-m", "broker", "audit", "verify", *map(str, chains)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert verify.stdout.count("OK: chain ") == 2


async def test_a_worker_that_dies_stops_the_set(td: DevTrustDomain, tmp_path: Path) -> None:
    """A worker killed from outside: the parent stops the other and exits 1."""
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    config = configure(td, port)
    process = BrokerProcess(["serve", "--config", str(config), "--workers", "2"], cwd=tmp_path)
    process.start()
    try:
        process.wait_ready(url, td.ca_bundle)
        assert process.proc is not None
        children = subprocess.run(
            ["pgrep", "-P", str(process.proc.pid)], capture_output=True, text=True, check=True
        ).stdout.split()
        assert len(children) == 2
        os.kill(int(children[0]), signal.SIGKILL)
        await asyncio.to_thread(process.proc.wait, 30)
        assert process.proc.returncode == 1
    finally:
        process.stop()


def test_workers_need_a_fixed_port(td: DevTrustDomain, tmp_path: Path) -> None:
    """Port 0 cannot be shared: a configuration error, exit 2, one line."""
    config = configure(td, 0)
    result = subprocess.run(
        [sys.executable, "-m", "broker", "serve", "--config", str(config), "--workers", "2"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--workers needs a fixed port" in result.stderr


async def test_gateway_on_two_workers_refuses_a_revocation_on_both(
    td: DevTrustDomain, tmp_path: Path
) -> None:
    """`--workers 2` with a gateway: both bind its port; an agent revocation holds on both."""
    import aiohttp

    from tests.support.upstream import local_upstream

    port, gateway_port = free_port(), free_port()
    url, gateway = f"https://127.0.0.1:{port}", f"https://127.0.0.1:{gateway_port}"
    key_file = tmp_path / "upstream.key"
    key_file.write_text("a-key-the-agent-never-sees\n")
    leaks.remember("a-key-the-agent-never-sees")
    async with local_upstream("a-key-the-agent-never-sees") as upstream:
        data = yaml.safe_load(configure(td, port).read_text())
        data["gateway"] = {
            "port": gateway_port,
            "routes": {
                "up": {
                    "tool": "analytics_api",
                    "upstream": upstream.url,
                    "key": {"source": "file", "file": str(key_file)},
                    "methods": ["GET"],
                }
            },
        }
        td.config.write_text(yaml.safe_dump(data))
        # The state file exists before the workers start: two processes creating a fresh
        # SQLite file at once can collide ("database is locked"; a separate start-up race).
        store = SqliteStateStore(td.root / "state.db", SystemClock())
        await store.start()
        await store.close()
        process = BrokerProcess(
            ["serve", "--config", str(td.config), "--workers", "2"], cwd=tmp_path
        )
        process.start()
        try:
            process.wait_ready(url, td.ca_bundle)
            process.wait_listening(2)
            analytics = Agent(td, url, "analytics")
            issued = await analytics.credentials(ANALYTICS)
            token = issued.body["credentials"][0]["token"]

            async def call() -> int:
                connector = aiohttp.TCPConnector(ssl=analytics.context(), force_close=True)
                async with (
                    aiohttp.ClientSession(connector=connector) as session,
                    session.get(
                        f"{gateway}/up/v1/models", headers={"Authorization": f"Bearer {token}"}
                    ) as response,
                ):
                    await response.read()
                    return response.status

            for _ in range(50):  # the gateway listener may come up just after /readyz
                try:
                    await call()
                    break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
            assert [await call() for _ in range(12)] == [200] * 12
            revoked = await Agent(td, url, "admin").request(
                "POST",
                "/v1/admin/agents/revoke",
                json_body={"spiffe_id": "spiffe://example.org/agent/analytics"},
            )
            assert revoked.status == 200
            assert [await call() for _ in range(12)] == [401] * 12  # whichever worker answers
        finally:
            assert process.stop() == 0
    gateway_records = [
        r
        for chain in (td.root / "audit.w0.log", td.root / "audit.w1.log")
        for r in audit_records(chain)
        if r["event"] == "gateway.request"
    ]
    assert len(gateway_records) >= 24
