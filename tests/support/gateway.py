"""The development trust domain served in-process with its gateway.

The upstream's key is held by OpenBao (route `llm`) and a file (route `claude`); without
OpenBao, by the file for both. Several brokers can serve one trust domain, each with a
configuration of its own (replicas sharing a Redis).
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from broker.clock import SystemClock
from broker.config.settings import Settings, load_settings
from broker.dev.trust_domain import DevTrustDomain, init_trust_domain
from broker.gateway.proxy import Gateway
from broker.gateway.server import GATEWAY, start_gateway
from tests.support import leaks
from tests.support.broker import deep_merge, in_process_broker
from tests.support.devbroker import DevBroker
from tests.support.openbao import KV_PATH, IssuerVault
from tests.support.upstream import Upstream


@dataclass
class GatewayEnv:
    """The broker, its gateway's URL, and the upstream behind it."""

    broker: DevBroker
    url: str
    upstream: Upstream
    gateway: Gateway

    async def settled_records(self, event: str | None = None) -> list[dict[str, Any]]:
        """The audit records, once the background `gateway.request` writes are done."""
        await self.gateway.settled()
        return self.records(event)

    async def credential(self, agent: str = "analytics", tool: str = "analytics_api") -> str:
        """A fresh broker credential for `agent` (over mTLS, so bound by `cnf`)."""
        body: dict[str, Any] = {"tools": [tool]}
        if agent == "claims":
            body["user_token"] = self.broker.user_token("alice")
        response = await self.broker.agent(agent).credentials(body)
        assert response.status == 201, response.body
        token = response.body["credentials"][0]["token"]
        assert isinstance(token, str)
        return token

    def context(self, agent: str | None = "analytics") -> ssl.SSLContext:
        """The TLS context of `agent` (its X.509-SVID as client certificate; None: none)."""
        return self.broker.agent(agent).context()

    def session(self, agent: str | None = "analytics") -> aiohttp.ClientSession:
        """An HTTP session to the gateway as `agent`."""
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.context(agent)))

    def records(self, event: str | None = None) -> list[dict[str, Any]]:
        """The audit records of this broker (of one event)."""
        path = self.broker.settings.audit.path
        assert path is not None
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [r for r in records if event is None or r["event"] == event]


def gateway_section(
    upstream: Upstream,
    key_file: Path,
    limits: dict[str, Any] | None = None,
    *,
    vault: bool = True,
    **extra_routes: Any,
) -> dict[str, Any]:
    """The `gateway:` section the tests use: OpenAI-like and Anthropic-like routes."""
    llm_key = (
        {"source": "vault", "path": KV_PATH, "field": "api_key"}
        if vault
        else {"source": "file", "file": str(key_file)}
    )
    return {
        "host": "127.0.0.1",
        "port": 0,
        "first_byte_timeout_seconds": 5,
        "idle_timeout_seconds": 5,
        **(limits or {}),
        "routes": {
            "llm": {
                "tool": "analytics_api",
                "upstream": upstream.url,
                "key_header": "authorization",
                "key": llm_key,
                "methods": ["GET", "POST"],
                "path_prefixes": ["/v1/chat/", "/v1/models"],
                "models": ["gpt-4o-mini"],
            },
            "claude": {
                "tool": "analytics_api",
                "upstream": upstream.url,
                "key_header": "x-api-key",
                "key": {"source": "file", "file": str(key_file)},
                "methods": ["POST"],
                "path_prefixes": ["/v1/messages"],
            },
            **extra_routes,
        },
    }


def gateway_trust_domain(directory: Path) -> DevTrustDomain:
    """Create the development trust domain (its audit files watched for secrets)."""
    td, _ = init_trust_domain(directory, None, SystemClock())
    leaks.watch_audit(td.root)
    return td


def gateway_settings(
    td: DevTrustDomain,
    upstream: Upstream,
    *,
    bao: IssuerVault | None = None,
    limits: dict[str, Any] | None = None,
    name: str = "config.yaml",
    overrides: Mapping[str, Any] | None = None,
    **extra_routes: Any,
) -> Settings:
    """The trust domain's configuration with the gateway (and OpenBao, when given), as `name`.

    Args:
        td: The trust domain.
        upstream: The upstream behind every route.
        bao: OpenBao holding route `llm`'s key (None: the key file holds it).
        limits: Keys of the `gateway:` section (timeouts, sizes).
        name: The configuration file written beside the trust domain's own.
        overrides: Deep-merged into the configuration (`state`, `audit`, ...).
        extra_routes: More routes.
    """
    key_file = td.root / "upstream.key"
    key_file.write_text(upstream.key + "\n")
    config = yaml.safe_load(td.config.read_text())
    config["listen"]["port"] = 0
    if bao is not None:
        config["vault"] = {
            "address": bao.server.address,
            "auth": {"method": "token", "token_file": str(bao.token_file)},
        }
        if bao.server.ca_file:
            config["vault"]["ca_file"] = str(bao.server.ca_file)
    config["gateway"] = gateway_section(
        upstream, key_file, limits, vault=bao is not None, **extra_routes
    )
    path = td.root / name
    path.write_text(yaml.safe_dump(deep_merge(config, overrides or {}), sort_keys=False))
    settings = load_settings(path)
    assert settings.gateway is not None
    return settings


@asynccontextmanager
async def serve_gateway(
    td: DevTrustDomain, settings: Settings, upstream: Upstream
) -> AsyncIterator[GatewayEnv]:
    """Serve the broker and its gateway in-process, each on a free port."""
    assert settings.gateway is not None
    async with in_process_broker(settings) as running:
        runner, _site, url = await start_gateway(settings.gateway, running.runtime)
        try:
            yield GatewayEnv(DevBroker(td, running, settings), url, upstream, runner.app[GATEWAY])
        finally:
            await runner.cleanup()


@asynccontextmanager
async def gateway_broker(
    directory: Path,
    bao: IssuerVault,
    upstream: Upstream,
    limits: dict[str, Any] | None = None,
    **extra_routes: Any,
) -> AsyncIterator[GatewayEnv]:
    """Create the dev trust domain, add Vault and the gateway, and serve both in-process."""
    td = gateway_trust_domain(directory)
    settings = gateway_settings(
        td, upstream, bao=bao, limits=limits, name=td.config.name, **extra_routes
    )
    async with serve_gateway(td, settings, upstream) as env:
        yield env
