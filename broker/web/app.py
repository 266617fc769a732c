"""The aiohttp application: routes, middlewares, and the runtime opened in `cleanup_ctx`."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog
from aiohttp import web

from broker.config.settings import Settings
from broker.constants import MAX_BODY_BYTES
from broker.runtime import Runtime, open_runtime
from broker.typing import Clock
from broker.web.discovery import Discovery
from broker.web.handlers import (
    admin,
    approvals,
    credentials,
    health,
    oauth,
    revocation,
    wellknown,
    whoami,
)
from broker.web.keys import (
    AGENTS,
    CATALOGUE,
    DISCOVERY,
    INTROSPECTION,
    PIPELINE,
    PROBES,
    REVOCATION,
    RUNTIME,
    TRACER,
    XFCC_HEADER,
)
from broker.web.middleware import middlewares
from broker.web.probes import Probes
from broker.web.worker_metrics import WorkerMetrics

__all__ = ["create_app"]

log = structlog.get_logger(__name__)


def create_app(settings: Settings, *, clock: Clock | None = None) -> web.Application:
    """Build the application; its resources open when the runner starts it.

    Args:
        settings: The validated configuration.
        clock: Injected clock (tests); the system clock otherwise.
    """
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=middlewares())

    async def runtime_context(app: web.Application) -> AsyncIterator[None]:
        async with (
            open_runtime(settings, clock) as runtime,
            _worker_metrics(settings, runtime) as gathered,
        ):
            app[RUNTIME] = runtime
            app[PIPELINE] = runtime.pipeline
            app[INTROSPECTION] = runtime.introspection
            app[REVOCATION] = runtime.revocation
            app[AGENTS] = runtime.agents
            app[CATALOGUE] = runtime.catalogue
            app[DISCOVERY] = Discovery(runtime.tokens, settings.default_issuer)
            app[PROBES] = Probes(runtime.readiness, runtime.metrics, gathered)
            app[XFCC_HEADER] = settings.authentication.forwarded_client_cert_header
            if runtime.tracer.enabled:
                app[TRACER] = runtime.tracer
            yield

    app.cleanup_ctx.append(runtime_context)
    app.router.add_get("/healthz", health.healthz)
    app.router.add_get("/readyz", health.readyz)
    app.router.add_get("/readyz/public", health.readyz_public)
    app.router.add_get("/metrics", health.metrics)
    app.router.add_get("/.well-known/jwks.json", wellknown.jwks)
    app.router.add_get("/.well-known/oauth-authorization-server", wellknown.metadata)
    app.router.add_get("/.well-known/openid-configuration", wellknown.openid_configuration)
    app.router.add_get("/v1/whoami", whoami.whoami)
    app.router.add_post("/v1/credentials", credentials.post_credentials)
    app.router.add_post("/v1/token", oauth.token)
    app.router.add_post("/v1/introspect", oauth.introspect)
    app.router.add_post("/v1/revoke", revocation.revoke)
    app.router.add_post("/v1/admin/agents/revoke", revocation.revoke_agent)
    app.router.add_get("/v1/admin/agents", admin.list_agents)
    app.router.add_post("/v1/admin/approvals/{approval_id}", approvals.decide)
    app.router.add_get("/v1/approvals/{approval_id}", approvals.collect)
    return app


@contextlib.asynccontextmanager
async def _worker_metrics(
    settings: Settings, runtime: Runtime
) -> AsyncIterator[Callable[[], Awaitable[bytes]] | None]:
    """Under `--workers`, this worker's metrics socket and the gathering of all (else None)."""
    if settings.workers <= 1:
        yield None
        return
    worker = WorkerMetrics(runtime.metrics, settings.worker_index, settings.workers)
    try:
        await worker.start()
    except OSError as exc:
        # Metrics are not worth a worker: this one answers with its own samples only.
        log.warning("worker metrics socket not available", error=str(exc))
        yield None
        return
    try:
        yield worker.exposition
    finally:
        await worker.close()
