"""Liveness and readiness probes (no authentication: Kubernetes calls them)."""

from __future__ import annotations

from aiohttp import web

from broker.errors import Unavailable
from broker.metrics import CONTENT_TYPE
from broker.web.keys import DRAINING, PROBES
from broker.web.problem import json_response

__all__ = ["healthz", "metrics", "readyz"]


async def healthz(_request: web.Request) -> web.Response:
    """The process serves requests."""
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """The broker can issue: identity, state and audit are ready.

    Raises:
        Unavailable: Shutting down, or some dependency is not ready; `checks` says which.
    """
    draining = request.app.get(DRAINING)
    if draining is not None and draining.is_set():
        raise Unavailable("not ready: shutting down", retry_after=1, extra={"draining": True})
    checks = await request.app[PROBES].readiness()
    if not all(checks.values()):
        failing = ", ".join(name for name, ok in checks.items() if not ok)
        raise Unavailable(f"not ready: {failing}", retry_after=1, extra={"checks": checks})
    return json_response({"status": "ready", "checks": checks})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics (no authentication: Prometheus scrapes them)."""
    body = request.app[PROBES].metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
