"""A TCP relay that does not pass a client's disconnect on, like some load balancers.

A request already forwarded runs to completion upstream even after the client gave up;
the answer is then dropped. Put in front of OpenBao (TLS passes through untouched), it
makes "Vault carried out a request whose answer the broker never saw" deterministic:
freeze OpenBao, let the broker time out, resume it. (Without the relay, OpenBao may or
may not notice the closed connection in time: a race on its side.)
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

from tests.support.broker import free_port

# How long an abandoned upstream request may run before the relay hangs up on it.
UPSTREAM_PATIENCE_SECONDS = 60.0


@dataclass
class StubbornProxy:
    address: str  # the upstream's URL with the relay's port
    forwarded: int = 0  # connections relayed so far


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()


async def _relay(
    proxy: StubbornProxy,
    host: str,
    port: int,
    client_reader: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
) -> None:
    proxy.forwarded += 1
    try:
        upstream_reader, upstream_writer = await asyncio.open_connection(host, port)
    except OSError:
        client_writer.close()
        return
    answers = asyncio.create_task(_pump(upstream_reader, client_writer))
    await _pump(client_reader, upstream_writer)  # until the client hangs up
    # The client is gone, but upstream is not told: it finishes what it was sent.
    with contextlib.suppress(TimeoutError, ConnectionError):
        await asyncio.wait_for(answers, UPSTREAM_PATIENCE_SECONDS)
    for writer in (upstream_writer, client_writer):
        writer.close()


@contextmanager
def stubborn_proxy(upstream: str) -> Iterator[StubbornProxy]:
    """Relay 127.0.0.1:<free port> to `upstream` (an http(s) URL) on a thread of its own."""
    parts = urlsplit(upstream)
    assert parts.hostname is not None
    assert parts.port is not None
    host, port = parts.hostname, parts.port
    listen = free_port()
    proxy = StubbornProxy(f"{parts.scheme}://{host}:{listen}")
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stopping: asyncio.Event | None = None

    async def serve() -> None:
        nonlocal stopping
        stopping = asyncio.Event()
        server = await asyncio.start_server(
            lambda r, w: _relay(proxy, host, port, r, w), "127.0.0.1", listen
        )
        started.set()
        async with server:
            await stopping.wait()
        relays = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in relays:
            task.cancel()
        await asyncio.gather(*relays, return_exceptions=True)

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    if not started.wait(5):
        raise RuntimeError("the relay did not start")
    try:
        yield proxy
    finally:
        assert stopping is not None
        loop.call_soon_threadsafe(stopping.set)
        thread.join(5)
        loop.close()
