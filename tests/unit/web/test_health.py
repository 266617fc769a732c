"""The probes: /readyz is strict, /readyz/public tolerates a shared backend, both drain."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from broker.metrics import Metrics
from broker.web.handlers import health
from broker.web.keys import DRAINING, PROBES
from broker.web.middleware import middlewares
from broker.web.probes import Probes

ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]


async def probe_app(
    aiohttp_client: ClientFactory, checks: dict[str, bool], *, draining: bool = False
) -> TestClient[Any, Any]:
    async def readiness() -> dict[str, bool]:
        return dict(checks)

    app = web.Application(middlewares=middlewares())
    app[PROBES] = Probes(readiness, Metrics())
    app[DRAINING] = event = asyncio.Event()
    if draining:
        event.set()
    app.router.add_get("/readyz", health.readyz)
    app.router.add_get("/readyz/public", health.readyz_public)
    return await aiohttp_client(app)


@pytest.mark.parametrize(
    ("checks", "strict", "public", "status"),
    [
        ({"identity": True, "state": True, "audit": True}, 200, 200, "ready"),
        ({"identity": True, "state": False, "audit": True}, 503, 200, "degraded"),
        ({"identity": True, "state": True, "audit": False}, 503, 503, None),
        ({"identity": False, "state": True, "audit": True}, 503, 503, None),
    ],
)
async def test_public_readiness_ignores_only_the_shared_state_store(
    aiohttp_client: ClientFactory,
    checks: dict[str, bool],
    strict: int,
    public: int,
    status: str | None,
) -> None:
    """State down: /readyz 503, /readyz/public 200 `degraded`; identity or audit down: both 503."""
    client = await probe_app(aiohttp_client, checks)
    response = await client.get("/readyz")
    assert response.status == strict
    response = await client.get("/readyz/public")
    assert response.status == public
    body = await response.json(content_type=None)
    assert body["checks"] == checks
    if status is not None:
        assert body["status"] == status
    else:
        assert response.content_type == "application/problem+json"


async def test_both_readiness_probes_fail_while_draining(aiohttp_client: ClientFactory) -> None:
    """SIGTERM received: /readyz and /readyz/public both 503 with `draining`."""
    client = await probe_app(
        aiohttp_client, {"identity": True, "state": True, "audit": True}, draining=True
    )
    for path in ("/readyz", "/readyz/public"):
        response = await client.get(path)
        assert response.status == 503
        assert (await response.json(content_type=None))["draining"] is True
