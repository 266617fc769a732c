"""Liveness and readiness probes (no authentication: Kubernetes calls them).

Two readiness questions, because one shared backend must not empty the Service:
- `/readyz`: can this broker do everything (identity, state store and audit sink ready)?
  For operators, monitoring and anything that wants the whole truth.
- `/readyz/public`: should this pod receive traffic? Identity and audit ready, not
  draining. The state store is reported in `checks` but does not fail it: every replica
  shares the same Redis, so taking them all out of the Service during a Redis outage
  would also take away the JWKS and discovery documents resource servers verify tokens
  with, and turn the API's 503 problem documents into refused connections. The chart's
  readinessProbe uses this one.
"""

from __future__ import annotations

from collections.abc import Collection

from aiohttp import web

from broker.errors import Unavailable
from broker.metrics import CONTENT_TYPE
from broker.web.keys import DRAINING, PROBES
from broker.web.problem import json_response

__all__ = ["PUBLIC_CHECKS", "healthz", "metrics", "readyz", "readyz_public"]

# What a pod needs to serve its public documents and answer the API: its own SVID (the
# TLS listener) and its own audit sink (per pod). Shared backends are not in the list.
PUBLIC_CHECKS = frozenset({"identity", "audit"})


async def healthz(_request: web.Request) -> web.Response:
    """The process serves requests."""
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """The broker can issue: identity, state and audit are ready.

    Raises:
        Unavailable: Shutting down, or some dependency is not ready; `checks` says which.
    """
    return await _ready(request, required=None)


async def readyz_public(request: web.Request) -> web.Response:
    """The pod should receive traffic: identity and audit ready, not shutting down.

    A failing shared backend (the state store) is reported in `checks`, with
    `"status": "degraded"`, but the answer stays 200.

    Raises:
        Unavailable: Shutting down, or identity or audit not ready; `checks` says which.
    """
    return await _ready(request, required=PUBLIC_CHECKS)


async def _ready(request: web.Request, *, required: Collection[str] | None) -> web.Response:
    draining = request.app.get(DRAINING)
    if draining is not None and draining.is_set():
        raise Unavailable("not ready: shutting down", retry_after=1, extra={"draining": True})
    checks = await request.app[PROBES].readiness()
    failing = [name for name, ok in checks.items() if not ok]
    blocking = [name for name in failing if required is None or name in required]
    if blocking:
        raise Unavailable(
            f"not ready: {', '.join(blocking)}", retry_after=1, extra={"checks": checks}
        )
    return json_response({"status": "degraded" if failing else "ready", "checks": checks})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics (no authentication: Prometheus scrapes them)."""
    body = await request.app[PROBES].exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
