"""Serving: the HTTPS and metrics listeners, and the graceful drain on SIGTERM.

The HTTPS listener uses the rotating TLS context; the optional plain-HTTP listener serves
only /metrics and /healthz to Prometheus.

Termination, in order (what Kubernetes needs to lose no request during a rollout):

1. SIGTERM: /readyz answers 503 at once; every response carries `Connection: close`, so
   that keep-alive clients reconnect through the Service to another replica.
2. For `listen.drain_delay_seconds` the listener still accepts connections and serves
   them normally: endpoints, kube-proxy and load balancers take a few seconds to stop
   routing to a terminating pod, and a refused connection in that window is a failed call.
3. The listener closes (new connections are refused); requests in flight get
   `listen.shutdown_timeout_seconds` to finish; then the runtime closes (final audit
   checkpoint) and the process exits 0.

SIGINT (Ctrl-C at a terminal) skips the delay: nothing routes to an interactive process.
A second SIGTERM or SIGINT during the delay ends it early.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from broker.config.settings import MetricsSettings, Settings
from broker.gateway.server import start_gateway
from broker.runtime import Runtime
from broker.typing import Clock
from broker.web.app import create_app
from broker.web.handlers import health
from broker.web.keys import DRAINING, PROBES, RUNTIME
from broker.web.middleware import problems
from broker.web.probes import Probes

__all__ = ["serve"]

log = structlog.get_logger(__name__)

# After the wait for requests in flight: how long a request that arrived on an open
# keep-alive connection at the last moment still gets.
STRAGGLER_SECONDS = 2.0


async def serve(
    settings: Settings,
    *,
    on_listening: Callable[[str], None] | None = None,
    clock: Clock | None = None,
    stop: asyncio.Event | None = None,
    on_gateway: Callable[[str], None] | None = None,
) -> None:
    """Serve until a termination signal (or `stop`) arrives, then drain and close.

    Args:
        settings: The validated configuration.
        on_listening: Called with the base URL once the listener accepts connections.
        clock: Injected clock (tests).
        stop: An event that ends serving (tests); signals do too. Setting it drains
            like SIGTERM, delay included.
        on_gateway: Called with the gateway's base URL once it accepts connections.

    Raises:
        IdentityError: No identity material at start-up.
        OSError: A listener cannot bind.
    """
    app = create_app(settings, clock=clock)
    draining = asyncio.Event()
    app[DRAINING] = draining
    in_flight = _InFlight()
    # Outermost, so that every request is counted, including the ones refused early.
    app.middlewares.insert(0, in_flight.middleware)

    async def close_while_draining(_request: web.Request, response: web.StreamResponse) -> None:
        if draining.is_set():
            response.force_close()
            response.headers["Connection"] = "close"

    app.on_response_prepare.append(close_while_draining)
    # aiohttp's own shutdown stops reading from every connection at once, which would
    # starve a request whose body is still arriving: the wait for requests in flight is
    # done below, before it; its timeout here only bounds stragglers.
    runner = web.AppRunner(
        app, handle_signals=False, access_log=None, shutdown_timeout=STRAGGLER_SECONDS
    )
    await runner.setup()
    # The metrics and gateway listeners: closed before the runtime they share.
    side_runners: list[web.AppRunner] = []
    side_sites: list[web.TCPSite] = []
    try:
        runtime = app[RUNTIME]
        site = web.TCPSite(
            runner,
            settings.listen.host,
            settings.listen.port,
            ssl_context=runtime.tls.context,
            reuse_address=True,
            reuse_port=settings.workers > 1,
            backlog=1024,
        )
        await site.start()
        if settings.metrics is not None:
            side_runners.append(await _start_metrics_listener(settings.metrics, app[PROBES]))
        if settings.gateway is not None:
            gateway_runner, gateway_site, gateway_url = await start_gateway(
                settings.gateway, runtime, [in_flight.middleware], reuse_port=settings.workers > 1
            )
            side_runners.append(gateway_runner)
            side_sites.append(gateway_site)
            (on_gateway or _ignore)(gateway_url)
        host, port = _bound_address(runner, settings.listen.host, settings.listen.port)
        url = f"https://{host}:{port}"
        loop = type(asyncio.get_running_loop()).__module__.partition(".")[0]
        log.info("listening", url=url, spiffe_id=settings.spiffe_id, event_loop=loop)
        if on_listening is not None:
            on_listening(url)
        await _until_drained(settings, runtime, draining, stop or asyncio.Event())
        await site.stop()  # new connections are refused from here on
        for side in side_sites:
            await side.stop()
        log.info("listener closed", requests_in_flight=in_flight.count)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(settings.listen.shutdown_timeout_seconds):
                await in_flight.idle.wait()
        if in_flight.count:
            log.warning("shutdown timeout: cancelling requests", requests=in_flight.count)
    finally:
        for side_runner in side_runners:
            await side_runner.cleanup()
        await runner.cleanup()  # idle connections, then the runtime (final audit checkpoint)
        log.info("stopped")


def _ignore(_url: str) -> None:
    pass


class _InFlight:
    """Counts requests being handled, so that shutdown can wait for them."""

    __slots__ = ("count", "idle")

    def __init__(self) -> None:
        self.count = 0
        self.idle = asyncio.Event()
        self.idle.set()

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self.count += 1
        self.idle.clear()
        try:
            return await handler(request)
        finally:
            self.count -= 1
            if not self.count:
                self.idle.set()


async def _until_drained(
    settings: Settings, runtime: Runtime, draining: asyncio.Event, stop: asyncio.Event
) -> None:
    """Wait for a termination signal, turn readiness off, and hold the drain delay."""
    loop = asyncio.get_running_loop()
    hurry = asyncio.Event()

    def terminate(interactive: bool) -> None:  # noqa: FBT001 - a signal handler's argument
        if stop.is_set() or interactive:
            hurry.set()
        stop.set()

    loop.add_signal_handler(signal.SIGTERM, terminate, False)  # noqa: FBT003
    loop.add_signal_handler(signal.SIGINT, terminate, True)  # noqa: FBT003
    # SIGHUP: reload the policy now (validated first; a bad file keeps the old one).
    loop.add_signal_handler(signal.SIGHUP, runtime.policy.schedule_reload)
    try:
        await stop.wait()
        draining.set()
        delay = 0.0 if hurry.is_set() else settings.listen.drain_delay_seconds
        log.info(
            "draining",
            drain_delay_seconds=delay,
            shutdown_timeout_seconds=settings.listen.shutdown_timeout_seconds,
        )
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await hurry.wait()
        log.info("closing the listener")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)


async def _start_metrics_listener(settings: MetricsSettings, probes: Probes) -> web.AppRunner:
    """Plain HTTP for Prometheus: GET /metrics and /healthz, problem+json 404 for the rest."""
    app = web.Application(middlewares=[problems])
    app[PROBES] = probes
    app.router.add_get("/metrics", health.metrics)
    app.router.add_get("/healthz", health.healthz)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port, reuse_address=True)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    host, port = _bound_address(runner, settings.host, settings.port)
    log.info("metrics listening", url=f"http://{host}:{port}/metrics")
    return runner


def _bound_address(runner: web.AppRunner, host: str, port: int) -> tuple[str, int]:
    shown = f"[{host}]" if ":" in host else host
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:  # noqa: PLR2004
            return shown, int(address[1])
    return shown, port
