"""The generated development trust domain, served in-process, and agents that call it."""

from __future__ import annotations

import dataclasses
import json
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from broker.clock import SystemClock
from broker.config.settings import ListenSettings, Settings, load_settings
from broker.dev.trust_domain import DevTrustDomain, init_trust_domain, mint_user_token
from broker.typing import Clock
from tests.support import leaks
from tests.support.broker import InProcessBroker, in_process_broker


@dataclass
class Response:
    status: int
    headers: Mapping[str, str]
    body: Any

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";")[0]


@dataclass
class Agent:
    """An agent of the dev trust domain, calling the broker over mTLS."""

    td: DevTrustDomain
    url: str
    name: str | None

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.td.ca_bundle))
        if self.name is not None:
            directory = (
                self.td.agent_dir(self.name) if self.name != "admin" else self.td.root / "admin"
            )
            ctx.load_cert_chain(directory / "svid.pem", directory / "key.pem")
        return ctx

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: object = None,
        data: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.context())) as session,
            session.request(
                method, f"{self.url}{path}", json=json_body, data=data, headers=headers
            ) as resp,
        ):
            raw = await resp.read()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
            leaks.remember_response(body)
            return Response(resp.status, dict(resp.headers), body)

    async def credentials(self, body: object, **kwargs: Any) -> Response:
        return await self.request("POST", "/v1/credentials", json_body=body, **kwargs)


@dataclass
class DevBroker:
    td: DevTrustDomain
    running: InProcessBroker
    settings: Settings

    @property
    def url(self) -> str:
        return self.running.url

    def agent(self, name: str | None) -> Agent:
        return Agent(self.td, self.url, name)

    def user_token(
        self,
        user: str = "alice",
        *,
        tier: str = "standard",
        ttl: int = 600,
        groups: tuple[str, ...] = (),
    ) -> str:
        token = mint_user_token(
            self.td, user=user, tier=tier, ttl=ttl, groups=groups, clock=SystemClock()
        )
        leaks.remember(token)
        return token

    def idp_token(self, **claims: Any) -> str:
        """A token signed by the development IdP with exactly these claims (valid by default)."""
        import time

        import jwt
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        key = load_pem_private_key((self.td.root / "idp" / "key.pem").read_bytes(), password=None)
        kid = json.loads((self.td.root / "idp" / "jwks.json").read_text())["keys"][0]["kid"]
        now = int(time.time())
        body = {
            "iss": self.td.idp_issuer,
            "aud": "credential-broker",
            "sub": "alice",
            "iat": now,
            "exp": now + 300,
            **claims,
        }
        token = jwt.encode(body, key, algorithm="EdDSA", headers={"kid": kid})  # type: ignore[arg-type]
        leaks.remember(token)
        return token

    def audit_records(self) -> list[dict[str, Any]]:
        path = self.td.root / "audit.log"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@asynccontextmanager
async def dev_broker(
    directory: Path, *, clock: Clock | None = None, **overrides: Any
) -> AsyncIterator[DevBroker]:
    """Create a dev trust domain in `directory` and serve it in-process on a free port."""
    td, _ = init_trust_domain(directory, None, SystemClock())
    leaks.watch_audit(td.root)
    settings = load_settings(td.config)
    settings = dataclasses.replace(settings, listen=ListenSettings("127.0.0.1", 0), **overrides)
    async with in_process_broker(settings, clock) as running:
        yield DevBroker(td, running, settings)
