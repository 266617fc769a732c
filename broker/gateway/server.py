"""The gateway's listener: its own aiohttp application on its own port, sharing the runtime.

The runtime (state store, audit sink, token verifier, TLS identity) is the broker's own;
the gateway adds its upstream connection pool, its key sources and, for Vault key
sources, a Vault client of its own (the `vault:` section's settings).
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

import aiohttp
import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from broker.gateway.budgets import Budgets
from broker.gateway.config import GatewaySettings
from broker.gateway.keysource import create_key_source
from broker.gateway.proxy import Gateway
from broker.gateway.verify import GatewayVerifier
from broker.runtime import Runtime
from broker.typing import KeySource
from broker.vault.config import VaultSettings

if TYPE_CHECKING:
    from broker.vault.client import VaultClient

__all__ = ["GATEWAY", "create_gateway_app", "start_gateway"]

log = structlog.get_logger(__name__)

GATEWAY = web.AppKey("gateway", Gateway)


def create_gateway_app(
    settings: GatewaySettings, runtime: Runtime, middlewares: Sequence[Middleware] = ()
) -> web.Application:
    """The gateway application; its pool and key sources open when its runner starts.

    Args:
        settings: The `gateway:` section.
        runtime: The broker's opened runtime (shared).
        middlewares: The server's own (requests in flight, for the drain).
    """
    # The gateway streams bodies itself and enforces its own limit.
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=middlewares)

    async def context(app: web.Application) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            vault: VaultClient | None = None
            vault_settings = runtime.settings.issuers.get("vault")
            if isinstance(vault_settings, VaultSettings) and any(
                r.key_source.kind == "vault" for r in settings.routes.values()
            ):
                # hvac loads only for a gateway with Vault key sources.
                from broker.vault.client import VaultClient  # noqa: PLC0415

                vault = VaultClient(vault_settings, runtime.identity, runtime.clock)
                await vault.start()
                stack.push_async_callback(vault.close)
            keys: dict[str, KeySource] = {}
            for route in settings.routes.values():
                source = create_key_source(route.key_source, runtime.clock, vault)
                await source.start()
                stack.push_async_callback(source.close)
                keys[route.name] = source
            connector = aiohttp.TCPConnector(
                limit=settings.pool_size, keepalive_timeout=30, enable_cleanup_closed=True
            )
            # No cookie jar: the pool is shared by every agent, so a cookie one upstream
            # answer sets must not ride along on another agent's requests.
            session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                trust_env=False,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
            stack.push_async_callback(session.close)
            tls: dict[str, ssl.SSLContext | bool] = {}
            for route in settings.routes.values():
                tls[route.name] = (
                    ssl.create_default_context(cafile=str(route.ca_file)) if route.ca_file else True
                )
            audiences = {
                t.name: t.audience for t in runtime.settings.tools if t.audience is not None
            }
            app[GATEWAY] = Gateway(
                settings=settings,
                verifier=GatewayVerifier(
                    runtime.tokens, runtime.state, max_entries=settings.token_cache_entries
                ),
                budgets=Budgets(runtime.state),
                keys=keys,
                audit=runtime.audit,
                clock=runtime.clock,
                session=session,
                upstream_tls=tls,
                audiences=audiences,
            )
            try:
                yield
            finally:
                await app[GATEWAY].settled()  # before the audit sink closes

    async def handle(request: web.Request) -> web.StreamResponse:
        return await request.app[GATEWAY].handle(request)

    app.cleanup_ctx.append(context)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


async def start_gateway(
    settings: GatewaySettings,
    runtime: Runtime,
    middlewares: Sequence[Middleware] = (),
    *,
    reuse_port: bool = False,
) -> tuple[web.AppRunner, web.TCPSite, str]:
    """Start the gateway's listener with the broker's TLS identity.

    Returns:
        The runner (clean it up to stop), its site (stop it to refuse new connections)
        and the gateway's base URL.

    Raises:
        OSError: The listener cannot bind.
    """
    app = create_gateway_app(settings, runtime, middlewares)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=2)
    await runner.setup()
    try:
        site = web.TCPSite(
            runner,
            settings.host,
            settings.port,
            ssl_context=runtime.tls.context,
            reuse_address=True,
            reuse_port=reuse_port,  # `broker serve --workers N`: every worker binds it
        )
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    port = settings.port
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:  # noqa: PLR2004
            port = int(address[1])
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    url = f"https://{host}:{port}"
    log.info("gateway listening", url=url, routes=sorted(settings.routes))
    return runner, site, url
