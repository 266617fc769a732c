"""The optional plain-HTTP metrics listener of a real `broker serve` process."""

from __future__ import annotations

import json
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from broker.clock import SystemClock
from broker.config.settings import load_settings
from broker.dev.trust_domain import DevTrustDomain, init_trust_domain
from broker.errors import ConfigError
from tests.support import leaks
from tests.support.broker import BrokerProcess, free_port
from tests.support.devbroker import Agent


@dataclass
class Running:
    td: DevTrustDomain
    url: str
    metrics_url: str


def get(url: str, context: ssl.SSLContext | None = None) -> tuple[int, str, str]:
    """GET: status, content type, body."""
    try:
        with urllib.request.urlopen(url, timeout=10, context=context) as resp:  # noqa: S310
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """A broker with `metrics: {host: 127.0.0.1, port: P}`."""
    tmp = tmp_path_factory.mktemp("metrics-port")
    td, _ = init_trust_domain(tmp / "dev", None, SystemClock())
    leaks.watch_audit(td.root)
    port, metrics_port = free_port(), free_port()
    data = yaml.safe_load(td.config.read_text())
    data["listen"].update(port=port, drain_delay_seconds=0)
    data["metrics"] = {"host": "127.0.0.1", "port": metrics_port}
    config = td.root / "config-metrics.yaml"
    config.write_text(yaml.safe_dump(data))
    process = BrokerProcess(["serve", "--config", str(config)], cwd=tmp).start()
    try:
        url = f"https://127.0.0.1:{port}"
        process.wait_ready(url, td.ca_bundle)
        yield Running(td, url, f"http://127.0.0.1:{metrics_port}")
    finally:
        assert process.stop() == 0


async def test_prometheus_scrapes_metrics_over_plain_http(running: Running) -> None:
    """GET /metrics over plain HTTP: the Prometheus text format, counting HTTPS requests too."""
    response = await Agent(running.td, running.url, "analytics").credentials(
        {"tools": ["analytics_api"]}
    )
    assert response.status == 201
    status, content_type, body = get(f"{running.metrics_url}/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    assert 'broker_ready{check="identity"} 1.0' in body
    assert 'broker_credentials_issued_total{tool="analytics_api",type="jwt"} 1.0' in body


def test_same_metrics_as_the_https_endpoint(running: Running) -> None:
    """The HTTPS /metrics still answers, with the same metric families."""
    ctx = ssl.create_default_context(cafile=str(running.td.ca_bundle))
    _, _, secure = get(f"{running.url}/metrics", ctx)
    _, _, plain = get(f"{running.metrics_url}/metrics")

    def families(text: str) -> set[str]:
        return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}

    assert families(plain) == families(secure)
    assert "broker_http_requests_total" in families(plain)


def test_healthz_and_nothing_else(running: Running) -> None:
    """/healthz answers; every other path is a problem+json 404, never the API."""
    status, _, body = get(f"{running.metrics_url}/healthz")
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    for path in ("/readyz", "/v1/whoami", "/.well-known/jwks.json", "/"):
        status, content_type, body = get(f"{running.metrics_url}{path}")
        assert status == 404, path
        assert content_type.split(";")[0] == "application/problem+json"
        assert json.loads(body)["status"] == 404


def test_the_metrics_port_speaks_no_tls(running: Running) -> None:
    """A TLS handshake on the metrics port fails: it is plain HTTP, holding no key material."""
    host, port = running.metrics_url.removeprefix("http://").rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=str(running.td.ca_bundle))
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        pytest.raises(ssl.SSLError),
    ):
        ctx.wrap_socket(raw, server_hostname=host)


def test_without_a_metrics_section_there_is_no_listener(tmp_path: Path) -> None:
    """`metrics` absent: no plain-HTTP listener is configured; same port as listen: refused."""
    td, _ = init_trust_domain(tmp_path / "dev", None, SystemClock())
    assert load_settings(td.config).metrics is None
    data = yaml.safe_load(td.config.read_text())
    data["metrics"] = {"port": data["listen"]["port"]}
    td.config.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"metrics\.port"):
        load_settings(td.config)
