"""The gateway's request path: verify, decide, audit, forward, stream back, account.

One request, in order:
1. the route (first path segment) and the broker credential (the route's key header,
   `Authorization: Bearer` or `x-api-key`) -> 401 when missing, invalid, expired, revoked,
   for another audience, or bound (`cnf`) to another client certificate;
2. the route's method and path prefixes, then (only when the route has a model allow-list)
   the JSON body's `model`: the body is then buffered, up to `max_body_bytes`, to read it
   -> 403 with `reasons`;
3. budgets in the shared state store -> 429 with Retry-After;
4. the real key from its key source -> 503 when it cannot be read;
5. fail closed: a `gateway.forwarding` audit record is written durably before anything
   leaves (503 when the audit sink cannot take it);
6. forwarded with aiohttp's client (bounded keep-alive pool): the agent's credential and
   hop-by-hop headers stripped, the real key added, bodies streamed both ways (chunked,
   server-sent events) -> 502 unreachable or invalid upstream, 504 timeouts; the
   upstream's own status and body pass through unchanged. What step 3 consumed is
   refunded when the request fails before it could reach the upstream (steps 4 and 5, a
   connection the upstream refused), so that an outage does not spend the budgets. A
   response body that stalls beyond the idle timeout is cut: the agent's connection is
   closed (it cannot take the truncated body as complete), the upstream's too, and the
   request is recorded as the contract's upstream timeout (504);
7. after the response: spend from the reported usage recorded in the budgets, and one
   `gateway.request` record (status, bytes, latency, model, usage, cost). A refused
   request gets only its `gateway.request` record, written before the refusal is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import structlog
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from broker.audit.events import AuditEvent, gateway_request
from broker.domain import UserRef
from broker.errors import (
    BrokerError,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    Unavailable,
)
from broker.gateway.budgets import Budgets, Usage, cost_of
from broker.gateway.config import GatewaySettings, RouteSettings, TokenHeader
from broker.gateway.routes import Refusal, check_model, check_request, find_route, model_of
from broker.gateway.verify import GatewayCaller, GatewayRefused, GatewayVerifier
from broker.identity.tls import connection_chain
from broker.typing import AuditSink, Clock, KeySource
from broker.web.problem import problem_response

__all__ = ["Gateway"]

log = structlog.get_logger(__name__)

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)
_CREDENTIAL_HEADERS = frozenset({"authorization", "x-api-key"})
_NOT_FORWARDED = HOP_BY_HOP | _CREDENTIAL_HEADERS
# The model allow-list applies to requests that carry a JSON body (a GET of
# `/v1/models` has none and no model to check).
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_SMALL_BODY = 64 * 1024
_USAGE_TAIL = 1 << 20  # a non-streamed JSON body is parsed for usage up to this size


class BadGateway(BrokerError):
    """The upstream is unreachable or answered something that is not HTTP."""

    status = 502
    code = "bad_gateway"
    title = "Bad Gateway"


class GatewayTimeout(BrokerError):
    """The upstream did not connect, answer or keep streaming in time."""

    status = 504
    code = "gateway_timeout"
    title = "Gateway Timeout"


class AgentTimeout(BrokerError):
    """The agent stopped sending its request body for longer than the idle timeout."""

    status = 408
    code = "request_timeout"
    title = "Request Timeout"
    reason = "agent_idle_timeout"


class AgentGone(BrokerError):
    """The agent's connection closed while its request body was being read.

    Nobody receives the answer; 499 (the de facto "client closed request") is what the
    audit record says.
    """

    status = 499
    code = "client_closed_request"
    title = "Client Closed Request"
    reason = "agent_disconnected"


@dataclass(slots=True)
class _Record:
    """What the request's audit record says, filled in as the request proceeds."""

    request_id: str
    started: float
    method: str
    path: str
    route: RouteSettings | None = None
    caller: GatewayCaller | None = None
    model: str | None = None
    status: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    usage: Usage | None = None
    cost: int | None = None
    reasons: list[str] = field(default_factory=list)
    # Whether the request may have reached the upstream (then its budgets stay spent).
    forwarded: bool = False
    # The upstream's status, when the agent got it but the exchange then failed (`status`
    # is then the gateway's outcome: 502 or 504).
    upstream_status: int | None = None
    # The agent's side failed while its body streamed upstream (aiohttp's client then
    # reports a connection error: this says whose it was).
    agent_fault: BrokerError | None = None

    def details(self) -> dict[str, object]:
        out: dict[str, object] = {
            "route": self.route.name if self.route else None,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "latency_us": int((time.perf_counter() - self.started) * 1_000_000),
        }
        if self.upstream_status is not None:
            out["upstream_status"] = self.upstream_status
        if self.model is not None:
            out["model"] = self.model
        if self.usage is not None:
            out["usage"] = {
                "input_tokens": self.usage.input_tokens,
                "output_tokens": self.usage.output_tokens,
            }
        if self.cost is not None:
            out["cost_micros"] = self.cost
        return out


class Gateway:
    """The gateway's one handler, with the services it needs."""

    def __init__(
        self,
        *,
        settings: GatewaySettings,
        verifier: GatewayVerifier,
        budgets: Budgets,
        keys: dict[str, KeySource],
        audit: AuditSink,
        clock: Clock,
        session: aiohttp.ClientSession,
        upstream_tls: dict[str, ssl.SSLContext | bool],
        audiences: dict[str, str],
    ) -> None:
        """Wire the parts (opened and closed by the gateway's server)."""
        self._settings = settings
        self._verifier = verifier
        self._budgets = budgets
        self._keys = keys
        self._audit = audit
        self._clock = clock
        self._session = session
        self._tls = upstream_tls
        self._audiences = audiences
        self._pending: set[asyncio.Task[None]] = set()
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            connect=settings.connect_timeout_seconds,
            sock_connect=settings.connect_timeout_seconds,
            sock_read=None,  # the response headers: `first_byte`; the body: `idle` (below)
        )
        self._first_byte = settings.connect_timeout_seconds + settings.first_byte_timeout_seconds

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Serve one gateway request (every outcome audited)."""
        record = _Record(
            request_id=secrets.token_urlsafe(16),
            started=time.perf_counter(),
            method=request.method,
            path=request.path,
        )
        try:
            return await self._serve(request, record)
        except BrokerError as error:
            record.status = error.status
            reason = getattr(error, "reason", None) or error.code
            if not record.reasons:
                record.reasons.append(reason)
            if record.status in {401, 403, 404, 413, 429}:
                error.extra.setdefault("reasons", list(record.reasons))
            try:
                await self._write(request, record, "gateway.request", "deny")
            except Unavailable as unavailable:
                error = unavailable
            return problem_response(error, instance=request.path, request_id=record.request_id)

    async def _serve(self, request: web.Request, record: _Record) -> web.StreamResponse:
        route, raw_rest = find_route(self._settings.routes, request.raw_path.partition("?")[0])
        if route is None:
            raise NotFound("no such gateway route")
        record.route = route
        record.path = request.path.removeprefix("/" + route.name) or "/"
        chain = connection_chain(request.transport)
        peer = chain[0] if chain else None
        if self._settings.require_client_certificate and peer is None:
            raise GatewayRefused("client_certificate_required", "an X.509-SVID is required")
        token = _token(request, route.key_header)
        record.caller = await self._verifier.verify(
            token, self._audiences[route.tool], peer, self._clock.time()
        )
        body: bytes | None = None
        try:
            check_request(route, request.method, record.path, raw_rest)
            if route.models is not None and request.method in _BODY_METHODS:
                body = await _read_body(
                    request, self._settings.max_body_bytes, self._settings.idle_timeout_seconds
                )
                record.bytes_in = len(body)
                record.model = model_of(body)
                check_model(route, record.model)
        except Refusal as refusal:
            record.reasons.append(refusal.reason)
            raise Forbidden(refusal.detail) from None
        length = request.content_length
        if length is not None and length > self._settings.max_body_bytes:
            record.reasons.append("body_too_large")
            raise PayloadTooLarge("the request body is too large")
        caller = record.caller
        consumed, exhausted = await self._budgets.admit(
            route, caller.agent, caller.user, record.request_id, self._clock.time()
        )
        if exhausted is not None:
            record.reasons.append(f"budget_exhausted:{exhausted.kind}")
            raise RateLimited(
                f"the route's {exhausted.kind} budget is exhausted",
                retry_after=exhausted.retry_after,
                decision_id=record.request_id,
                reasons=["budget_exhausted"],
            )
        try:
            key = await self._keys[route.name].key()
            await self._write(request, record, "gateway.forwarding", "allow")
            return await self._forward(
                request=request,
                record=record,
                route=route,
                raw_rest=raw_rest,
                body=body,
                key=key.reveal(),
            )
        except BaseException:
            if not record.forwarded:
                await self._budgets.refund(consumed)  # a failed refund is logged, not raised
            raise

    async def _forward(
        self,
        *,
        request: web.Request,
        record: _Record,
        route: RouteSettings,
        raw_rest: str,
        body: bytes | None,
        key: str,
    ) -> web.StreamResponse:
        drop = _hop_by_hop(request.headers, _NOT_FORWARDED)
        headers = CIMultiDict(
            (name, value) for name, value in request.headers.items() if name.lower() not in drop
        )
        # The usage the upstream reports (audited, and the spend budgets' input) is read
        # from the body as it passes: a compressed body could not be read, so an agent
        # asking for gzip (or aiohttp adding it) would go unmetered. Always identity.
        headers["Accept-Encoding"] = "identity"
        if route.key_header is TokenHeader.AUTHORIZATION:
            headers["Authorization"] = f"Bearer {key}"
        else:
            headers["x-api-key"] = key
        url = (
            route.upstream + raw_rest + (f"?{request.query_string}" if request.query_string else "")
        )
        data: bytes | AsyncIterator[bytes] | None
        length = request.content_length
        if body is None and length is not None and length <= _SMALL_BODY:
            # A small sized body goes in one write with the headers (a stream of one
            # chunk costs a round of the event loop per part); it is all here already.
            body = await _read_body(
                request, self._settings.max_body_bytes, self._settings.idle_timeout_seconds
            )
            record.bytes_in = len(body)
        if body is not None:
            data = body
            headers.pop("Content-Length", None)
        elif request.can_read_body:
            data = self._stream_in(request, record)
        else:
            data = None
        record.forwarded = True
        try:
            async with asyncio.timeout(self._first_byte):
                upstream = await self._session.request(
                    request.method,
                    url,
                    headers=headers,
                    data=data,
                    timeout=self._timeout,
                    ssl=self._tls[route.name],
                    allow_redirects=False,
                    auto_decompress=False,
                )
        except TimeoutError as exc:
            if record.agent_fault is not None:
                raise record.agent_fault from None
            record.forwarded = not isinstance(exc, aiohttp.ConnectionTimeoutError)
            record.reasons.append("upstream_timeout")
            raise GatewayTimeout("the upstream did not answer in time") from None
        except PayloadTooLarge:
            record.reasons.append("body_too_large")
            raise
        except (aiohttp.ClientError, OSError) as exc:
            if record.agent_fault is not None:
                raise record.agent_fault from None
            # A connection that could not be made (refused, DNS, TLS handshake) carried
            # nothing of the request.
            record.forwarded = not isinstance(exc, aiohttp.ClientConnectorError)
            record.reasons.append("upstream_unreachable")
            raise BadGateway("the upstream is unreachable or answered invalidly") from None
        try:
            return await self._stream_out(request, record, route, upstream)
        finally:
            upstream.release()

    async def _stream_in(self, request: web.Request, record: _Record) -> AsyncIterator[bytes]:
        limit = self._settings.max_body_bytes
        while True:
            try:
                chunk = await _agent_chunk(request, self._settings.idle_timeout_seconds)
            except (AgentGone, AgentTimeout) as fault:
                record.agent_fault = fault
                raise
            if not chunk:
                return
            record.bytes_in += len(chunk)
            if record.bytes_in > limit:
                raise PayloadTooLarge("the request body is too large")
            yield chunk

    async def _stream_out(
        self,
        request: web.Request,
        record: _Record,
        route: RouteSettings,
        upstream: aiohttp.ClientResponse,
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        drop = _hop_by_hop(upstream.headers)
        for name, value in upstream.headers.items():
            if name.lower() not in drop:
                response.headers.add(name, value)
        record.status = upstream.status
        meter = _UsageMeter(upstream.headers.get("Content-Type", ""))
        completed, last = await self._pump(request, record, upstream, response, meter)
        # Spend and the record land before the agent sees the end of the body (the last
        # bytes of a sized body, or the end of a chunked one), so that its next request
        # already counts this one's cost.
        record.usage = meter.usage()
        record.model = record.model or meter.model
        record.cost = cost_of(route, record.model, record.usage)
        await self._complete(request, record, route)
        if completed and last:
            with contextlib.suppress(ConnectionError):
                await response.write(last)
        if completed:
            with contextlib.suppress(ConnectionError):
                await response.write_eof()
        elif request.transport is not None:
            request.transport.close()  # the agent must not take a truncated body as complete
        return response

    async def _pump(
        self,
        request: web.Request,
        record: _Record,
        upstream: aiohttp.ClientResponse,
        response: web.StreamResponse,
        meter: _UsageMeter,
    ) -> tuple[bool, bytes]:
        """Copy the upstream's body as it arrives, except a sized body's last bytes.

        Returns:
            Whether the body arrived whole, and the bytes held back (sent after the record).
        """
        held = b""
        try:
            await response.prepare(request)
        except OSError:  # ConnectionError and aiohttp's ClientConnectionResetError among them
            return _cut(record, AgentGone.status, AgentGone.reason)
        while True:
            try:
                chunk = await _next_chunk(upstream.content, self._settings.idle_timeout_seconds)
            except TimeoutError:
                return _cut(record, GatewayTimeout.status, "upstream_idle_timeout")
            except (aiohttp.ClientError, OSError):
                # The upstream broke its body off (closed, reset, malformed chunking).
                return _cut(record, BadGateway.status, "upstream_interrupted")
            if not chunk:
                # Read to the end (not just the last byte), so that the upstream
                # connection goes back to the keep-alive pool.
                return True, held
            record.bytes_out += len(chunk)
            meter.feed(chunk)
            if record.bytes_out == upstream.content_length:
                held = chunk  # the agent sees the end with these bytes
                continue
            try:
                await response.write(chunk)
            except OSError:
                # The agent went away: nobody reads the rest, so the upstream is cut
                # too (its connection is closed on release) rather than left generating.
                return _cut(record, AgentGone.status, AgentGone.reason)

    async def _complete(self, request: web.Request, record: _Record, route: RouteSettings) -> None:
        """Record the spend (awaited: the agent's next request must see it), then audit.

        The `gateway.request` record is written in the background: the request's
        `gateway.forwarding` record was durable before anything was forwarded, and
        waiting for a second fsync would only add latency. `settled()` (and closing)
        waits for these writes.
        """
        caller = record.caller
        assert caller is not None
        try:
            if record.cost:
                await self._budgets.record_spend(
                    route=route,
                    agent=caller.agent,
                    user=caller.user,
                    member=record.request_id,
                    cost=record.cost,
                    now=self._clock.time(),
                )
        except Unavailable:
            record.reasons.append("spend_not_recorded")
            log.warning("gateway spend not recorded", request_id=record.request_id)
        task = asyncio.create_task(
            self._write_completion(self._event(request, record, "gateway.request", "allow"))
        )
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _write_completion(self, event: AuditEvent) -> None:
        try:
            await self._audit.write(event)
        except Unavailable:
            log.exception("gateway completion not recorded", request_id=event.request_id)

    async def settled(self) -> None:
        """Wait until every background `gateway.request` record is written."""
        while self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    async def _write(
        self, request: web.Request, record: _Record, event: str, decision: str
    ) -> None:
        await self._audit.write(self._event(request, record, event, decision))

    def _event(
        self, request: web.Request, record: _Record, event: str, decision: str
    ) -> AuditEvent:
        caller = record.caller
        user: UserRef | None = caller.user if caller else None
        return gateway_request(
            event=event,
            ts=self._clock.now(),
            request_id=record.request_id,
            remote=request.remote,
            agent=caller.agent if caller else None,
            user=user,
            delegation_chain=caller.delegation_chain if caller else (),
            tool=record.route.tool if record.route else None,
            decision=decision,
            reasons=tuple(record.reasons),
            details=record.details(),
        )


def _cut(record: _Record, status: int, reason: str) -> tuple[bool, bytes]:
    """A response body that did not arrive whole: whose doing it was, in the record.

    The agent already has the upstream's status; the record keeps it as `upstream_status`
    and says what became of the exchange (`status`, `reason`).
    """
    record.reasons.append(reason)
    record.upstream_status, record.status = record.status, status
    return False, b""


def _hop_by_hop(
    headers: CIMultiDictProxy[str], always: frozenset[str] = HOP_BY_HOP
) -> frozenset[str]:
    """`always` and, RFC 9110 section 7.6.1, the headers that `Connection` names."""
    if "Connection" not in headers:
        return always
    named = {
        token.strip().lower()
        for value in headers.getall("Connection", [])
        for token in value.split(",")
    }
    return always | named


def _token(request: web.Request, preferred: TokenHeader) -> str | None:
    """The broker credential from the route's header, or the other one an SDK may use."""
    bearer = request.headers.get("Authorization", "")
    from_authorization = bearer[7:].strip() if bearer[:7].lower() == "bearer " else None
    from_api_key = request.headers.get("x-api-key")
    if preferred is TokenHeader.X_API_KEY:
        return from_api_key or from_authorization
    return from_authorization or from_api_key


async def _next_chunk(stream: aiohttp.StreamReader, idle: float) -> bytes:
    """The next bytes of a body (b"" at its end), waiting at most `idle` seconds for them.

    What has already arrived is taken without a timer, a cost per chunk that a small
    body, which arrives with its headers, need not pay.
    """
    chunk = stream.read_nowait()
    if chunk or stream.is_eof():
        return chunk
    async with asyncio.timeout(idle):
        return await stream.readany()


async def _agent_chunk(request: web.Request, idle: float) -> bytes:
    """The next bytes of the agent's body; its silence or its going away is its fault.

    Raises:
        AgentTimeout: Nothing came for `idle` seconds.
        AgentGone: The agent's connection closed.
    """
    try:
        return await _next_chunk(request.content, idle)
    except TimeoutError:
        raise AgentTimeout(f"no request body data for {idle:g} s") from None
    except ConnectionError:
        raise AgentGone("the agent's connection closed during its request body") from None


async def _read_body(request: web.Request, limit: int, idle: float) -> bytes:
    """The whole body, refused beyond `limit` (only for routes with a model allow-list).

    Raises:
        PayloadTooLarge: Over `limit`.
        AgentTimeout, AgentGone: The agent stalled or left mid-body.
    """
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge("the request body is too large")
    chunks: list[bytes] = []
    size = 0
    while chunk := await _agent_chunk(request, idle):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge("the request body is too large")
        chunks.append(chunk)
    return b"".join(chunks)


class _UsageMeter:
    """Finds the reported usage in a JSON body or a server-sent event stream, as it passes.

    JSON: the body's first MiB is kept and parsed at the end, when it mentions `usage` or
    `model`. SSE: only `data:` lines that mention `usage` are parsed; the largest input and
    output counts seen win (OpenAI sends usage in the last event; Anthropic sends input
    tokens first and output tokens last).
    """

    __slots__ = ("_buffer", "_input", "_output", "_sse", "model")

    def __init__(self, content_type: str) -> None:
        self._sse = content_type.startswith("text/event-stream")
        self._buffer = bytearray()
        self._input = -1
        self._output = -1
        self.model: str | None = None

    def feed(self, chunk: bytes) -> None:
        if not self._sse:
            if len(self._buffer) < _USAGE_TAIL:
                self._buffer += chunk[: _USAGE_TAIL - len(self._buffer)]
            return
        self._buffer += chunk
        *lines, rest = self._buffer.split(b"\n")
        self._buffer = bytearray(rest[-_USAGE_TAIL:])
        for line in lines:
            if line.startswith(b"data:") and b'"usage"' in line:
                self._take(bytes(line[5:]))

    def _take(self, text: bytes) -> None:
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError):
            return
        if not isinstance(data, dict):
            return
        message = data.get("message")
        for holder in (data, message if isinstance(message, dict) else {}):
            if isinstance(holder.get("model"), str) and self.model is None:
                self.model = holder["model"]
            usage = holder.get("usage")
            if isinstance(usage, dict):
                self._input = max(self._input, _int(usage, "prompt_tokens", "input_tokens"))
                self._output = max(self._output, _int(usage, "completion_tokens", "output_tokens"))

    def usage(self) -> Usage | None:
        if not self._sse and (b'"usage"' in self._buffer or b'"model"' in self._buffer):
            self._take(bytes(self._buffer))
        if self._input < 0 and self._output < 0:
            return None
        return Usage(max(self._input, 0), max(self._output, 0))


def _int(usage: dict[str, object], *names: str) -> int:
    for name in names:
        value = usage.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return -1
