"""The Python load generator: keep-alive HTTPS connections, closed or open loop.

wrk cannot present a client certificate, so the mTLS rows (and the open-loop rows, which
wrk does not do without coordinated omission) use this generator. It is one process per
`python -m bench.client SPEC_JSON` (the harness starts several, so that the generator is
not limited to one core), with a hand-written HTTP/1.1 client over `asyncio` streams: an
aiohttp client costs several times more CPU per request, which on a small machine would
make the generator, not the server, the bottleneck.

Closed loop: each connection sends its next request when the previous answer arrived;
counts what completes inside the measured window.

Open loop: requests are sent on a fixed schedule (`rate` per second, from `start_at`),
whether or not earlier ones were answered; each takes an idle connection from the pool
(waiting for one when all are busy) and its latency is measured from its *scheduled* send
time, so a slow server cannot hide its queueing (no coordinated omission).

Prints one JSON object: statuses seen in the window and overall, connection errors,
latencies (microseconds) of the window's responses, and the scheduler's worst lag.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Spec", "main"]


@dataclass
class Spec:
    """What one generator process does (passed as JSON on the command line)."""

    host: str
    port: int
    path: str
    ca: str
    method: str = "POST"
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    cert: str | None = None
    key: str | None = None
    mode: str = "closed"  # or "open"
    connections: int = 16
    rate: float = 0.0  # open loop: requests per second from this process
    phase: float = 0.0  # open loop: offset of this process's schedule, seconds
    start_at: float = 0.0  # wall clock (time.time()) at which the window opens
    warmup: float = 0.0  # open loop: the schedule starts this long before the window
    seconds: float = 5.0
    requests: int = 0  # closed loop: stop after this many requests (0: at the window's end)
    drain: float = 10.0  # open loop: how long to wait for answers after the last send


class _Conn:
    """One keep-alive HTTP/1.1 connection over TLS."""

    def __init__(self, spec: Spec, ctx: ssl.SSLContext, request: bytes) -> None:
        self.spec = spec
        self.ctx = ctx
        self.request_bytes = request
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(
            self.spec.host, self.spec.port, ssl=self.ctx, server_hostname=self.spec.host
        )

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def request(self) -> int:
        if self.writer is None:
            await self.open()
        assert self.reader is not None
        assert self.writer is not None
        self.writer.write(self.request_bytes)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = -1
        chunked = False
        close = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"connection" and b"close" in value.lower():
                close = True
        if chunked:
            await self._chunks()
        elif length > 0:
            await self.reader.readexactly(length)
        if close:
            self.close()
        return status

    async def _chunks(self) -> None:
        assert self.reader is not None
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await self.reader.readexactly(size + 2)
            if size == 0:
                return


def _request_bytes(spec: Spec) -> bytes:
    body = spec.body.encode()
    headers = {
        "Host": f"{spec.host}:{spec.port}",
        "Content-Length": str(len(body)),
        **spec.headers,
    }
    head = f"{spec.method} {spec.path} HTTP/1.1\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()
    )
    return head.encode() + b"\r\n" + body


def _context(spec: Spec) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=spec.ca)
    if spec.cert is not None:
        ctx.load_cert_chain(spec.cert, spec.key)
    return ctx


class _Run:
    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.window: Counter[str] = Counter()
        self.seen: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.latencies: list[int] = []
        self.late_max = 0.0
        self.late_start = 0.0
        self.completed = 0  # answers that arrived inside the window, whenever sent
        self.remaining = spec.requests or -1
        self.began = self.finished = 0.0
        now_wall, now_mono = time.time(), time.monotonic()
        self.start = now_mono + (spec.start_at - now_wall)
        self.end = self.start + spec.seconds

    def in_window(self, sent: float, done: float) -> bool:
        if self.spec.mode == "open":
            # Every request *scheduled* in the window counts, however late its answer.
            return self.start <= sent < self.end
        return self.start <= sent and done <= self.end

    def record(self, status: int, sent: float, done: float) -> None:
        self.seen[str(status)] += 1
        if self.start <= done <= self.end:
            self.completed += 1
        if self.in_window(sent, done):
            self.window[str(status)] += 1
            self.latencies.append(int((done - sent) * 1e6))

    def error(self, exc: BaseException, sent: float) -> None:
        name = type(exc).__name__
        self.seen[name] += 1
        if self.start <= sent < self.end:
            self.errors[name] += 1

    async def connect(self, ctx: ssl.SSLContext, request: bytes) -> list[_Conn]:
        conns = [_Conn(self.spec, ctx, request) for _ in range(self.spec.connections)]
        await asyncio.gather(*(c.open() for c in conns))
        # One request per connection before the window: TLS session, server caches.
        for status in await asyncio.gather(*(c.request() for c in conns)):
            self.seen[str(status)] += 1
        first_send = self.start - self.spec.warmup
        if self.spec.mode == "open" and time.monotonic() > first_send:
            self.late_start = time.monotonic() - first_send
        elif self.spec.mode != "open" and time.monotonic() > self.start:
            self.late_start = time.monotonic() - self.start
        return conns

    async def closed(self, conns: list[_Conn]) -> None:
        # No pause before the window: the time until it opens is the warm-up.
        self.began = time.monotonic()

        async def loop(conn: _Conn) -> None:
            while (sent := time.monotonic()) < self.end and self.remaining != 0:
                self.remaining -= 1
                try:
                    status = await conn.request()
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    self.error(exc, sent)
                    conn.close()
                    continue
                self.record(status, sent, time.monotonic())

        await asyncio.gather(*(loop(c) for c in conns))
        self.finished = time.monotonic()

    async def open_loop(self, conns: list[_Conn]) -> None:
        pool: asyncio.Queue[_Conn] = asyncio.Queue()
        for conn in conns:
            pool.put_nowait(conn)
        tasks: dict[asyncio.Task[None], float] = {}

        async def send(scheduled: float) -> None:
            conn = await pool.get()
            try:
                status = await conn.request()
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                self.error(exc, scheduled)
                conn.close()
            else:
                self.record(status, scheduled, time.monotonic())
            finally:
                pool.put_nowait(conn)

        interval = 1.0 / self.spec.rate
        index = 0
        first = self.start - self.spec.warmup + self.spec.phase
        self.began = first
        while (scheduled := first + index * interval) < self.end:
            now = time.monotonic()
            if scheduled > now:
                await asyncio.sleep(scheduled - now)
                now = time.monotonic()
            # Send everything that is due (the loop may have woken late).
            while scheduled <= now and scheduled < self.end:
                self.late_max = max(self.late_max, now - scheduled)
                task = asyncio.create_task(send(scheduled))
                tasks[task] = scheduled
                task.add_done_callback(tasks.pop)
                index += 1
                scheduled = first + index * interval
        await self._drain(tasks)
        self.finished = time.monotonic()

    async def _drain(self, tasks: dict[asyncio.Task[None], float]) -> None:
        """Wait for the answers still due; count what is still unanswered after `drain`."""
        if not tasks:
            return
        _, pending = await asyncio.wait(set(tasks), timeout=self.spec.drain)
        now = time.monotonic()
        for task in pending:
            scheduled = tasks[task]
            task.cancel()
            if self.start <= scheduled < self.end:
                # Unanswered after the drain: an error, and its wait so far is a lower
                # bound of its latency (leaving it out would flatter the percentiles).
                self.errors["unanswered"] += 1
                self.latencies.append(int((now - scheduled) * 1e6))
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*pending, return_exceptions=True)

    def result(self) -> dict[str, Any]:
        return {
            "window": dict(self.window),
            "seen": dict(self.seen),
            "errors": dict(self.errors),
            "latencies_us": self.latencies,
            "completed": self.completed,
            "late_max_ms": round(self.late_max * 1000, 3),
            "late_start_ms": round(self.late_start * 1000, 3),
            "active_s": round(self.finished - self.began, 3),
            "seconds": self.spec.seconds,
        }


async def run(spec: Spec) -> dict[str, Any]:
    """Run one generator process's share of the load."""
    state = _Run(spec)
    conns = await state.connect(_context(spec), _request_bytes(spec))
    try:
        if spec.mode == "open":
            await state.open_loop(conns)
        else:
            await state.closed(conns)
    finally:
        for conn in conns:
            conn.close()
    return state.result()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    spec = Spec(**json.loads(args[0]))
    result = asyncio.run(run(spec))
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
