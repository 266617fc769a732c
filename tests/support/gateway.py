"""The development trust domain served in-process with its gateway, OpenBao holding the key."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from broker.clock import SystemClock
from broker.config.settings import load_settings
from broker.dev.trust_domain import init_trust_domain
from broker.gateway.proxy import Gateway
from broker.gateway.server import GATEWAY, start_gateway
from tests.support import leaks
from tests.support.broker import in_process_broker
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
        """The audit records (of one event)."""
        return [r for r in self.broker.audit_records() if event is None or r["event"] == event]


def gateway_section(
    upstream: Upstream, key_file: Path, limits: dict[str, Any] | None = None, **extra_routes: Any
) -> dict[str, Any]:
    """The `gateway:` section the tests use: OpenAI-like and Anthropic-like routes."""
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
                "key": {"source": "vault", "path": KV_PATH, "field": "api_key"},
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


@asynccontextmanager
async def gateway_broker(
    directory: Path,
    bao: IssuerVault,
    upstream: Upstream,
    limits: dict[str, Any] | None = None,
    **extra_routes: Any,
) -> AsyncIterator[GatewayEnv]:
    """Create the dev trust domain, add Vault and the gateway, and serve both in-process."""
    td, _ = init_trust_domain(directory, None, SystemClock())
    leaks.watch_audit(td.root)
    key_file = directory / "upstream.key"
    key_file.write_text(upstream.key + "\n")
    config = yaml.safe_load(td.config.read_text())
    config["listen"]["port"] = 0
    config["vault"] = {
        "address": bao.server.address,
        "ca_file": str(bao.server.ca_file) if bao.server.ca_file else None,
        "auth": {"method": "token", "token_file": str(bao.token_file)},
    }
    if config["vault"]["ca_file"] is None:
        del config["vault"]["ca_file"]
    config["gateway"] = gateway_section(upstream, key_file, limits, **extra_routes)
    td.config.write_text(yaml.safe_dump(config, sort_keys=False))
    settings = load_settings(td.config)
    assert settings.gateway is not None
    async with in_process_broker(settings) as running:
        runner, _site, url = await start_gateway(settings.gateway, running.runtime)
        try:
            yield GatewayEnv(DevBroker(td, running, settings), url, upstream, runner.app[GATEWAY])
        finally:
            await runner.cleanup()
