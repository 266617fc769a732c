"""Serving: the HTTPS listener with the rotating TLS context, until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import structlog
from aiohttp import web

from broker.config.settings import Settings
from broker.typing import Clock
from broker.web.app import create_app
from broker.web.keys import RUNTIME

__all__ = ["serve"]

log = structlog.get_logger(__name__)

SHUTDOWN_GRACE_SECONDS = 10.0


async def serve(
    settings: Settings,
    *,
    on_listening: Callable[[str], None] | None = None,
    clock: Clock | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until a termination signal (or `stop`) arrives, then drain and close.

    Args:
        settings: The validated configuration.
        on_listening: Called with the base URL once the listener accepts connections.
        clock: Injected clock (tests).
        stop: An event that ends serving (tests); signals do too.

    Raises:
        IdentityError: No identity material at start-up.
        OSError: The listener cannot bind.
    """
    app = create_app(settings, clock=clock)
    runner = web.AppRunner(
        app, handle_signals=False, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_SECONDS
    )
    await runner.setup()
    try:
        runtime = app[RUNTIME]
        site = web.TCPSite(
            runner,
            settings.listen.host,
            settings.listen.port,
            ssl_context=runtime.tls.context,
            reuse_address=True,
            backlog=1024,
        )
        await site.start()
        host, port = _bound_address(runner, settings)
        url = f"https://{host}:{port}"
        log.info("listening", url=url, spiffe_id=settings.spiffe_id)
        if on_listening is not None:
            on_listening(url)
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        # SIGHUP: reload the policy now (validated first; a bad file keeps the old one).
        loop.add_signal_handler(signal.SIGHUP, runtime.policy.reload)
        try:
            await stop.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        log.info("shutting down")
    finally:
        await runner.cleanup()


def _bound_address(runner: web.AppRunner, settings: Settings) -> tuple[str, int]:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:  # noqa: PLR2004
            host = settings.listen.host
            return (f"[{host}]" if ":" in host else host), int(address[1])
    return settings.listen.host, settings.listen.port
