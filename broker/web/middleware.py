"""Request middlewares: request id and logging, error mapping, body limit, authentication."""

from __future__ import annotations

import contextlib
import re
import secrets
import time
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from broker.authn import Presented
from broker.constants import MAX_BODY_BYTES
from broker.domain import Caller
from broker.errors import (
    BadRequest,
    BrokerError,
    MethodNotAllowed,
    NotFound,
    OAuthError,
    PayloadTooLarge,
    Unauthenticated,
    UnsupportedMediaType,
)
from broker.identity.tls import connection_chain
from broker.web.keys import CALLER, PIPELINE, PROBES, REQUEST_ID, TRACER, XFCC_HEADER
from broker.web.problem import oauth_error_response, problem_response

__all__ = ["middlewares"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

log = structlog.get_logger("broker.request")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
OAUTH_PATHS = frozenset({"/v1/token", "/v1/introspect"})
_NO_SPAN = contextlib.nullcontext()
# RFC 7009 revocation is a form post; the same endpoint's JSON body is the broker's own API,
# whose errors stay problem documents (contract section 3).
OAUTH_FORM_PATHS = frozenset({"/v1/revoke"})
FORM = "application/x-www-form-urlencoded"


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id and trace span, bound to the logs; the outcome counted and logged.

    An inbound `X-Request-Id` is kept when sane; an inbound `traceparent` is continued.
    """
    inbound = request.headers.get("X-Request-Id", "")
    request_id = inbound if _REQUEST_ID.fullmatch(inbound) else secrets.token_urlsafe(16)
    request[REQUEST_ID] = request_id
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    tracer = request.app.get(TRACER)
    span = tracer.request(f"{request.method} {route}", request.headers) if tracer else _NO_SPAN
    with span:
        trace_id = tracer.trace_id() if tracer else None
        structlog.contextvars.clear_contextvars()
        if trace_id is None:
            structlog.contextvars.bind_contextvars(request_id=request_id)
        else:
            structlog.contextvars.bind_contextvars(request_id=request_id, trace_id=trace_id)
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            caller = request.get(CALLER)
            elapsed = time.perf_counter() - started
            # DEBUG: the audit record is the record of a request; at INFO this line would
            # cost more than some of the steps it reports on.
            log.debug(
                "request",
                method=request.method,
                path=request.path,
                status=status,
                ms=round(elapsed * 1000, 2),
                caller=caller.spiffe_id if caller else None,
            )
            probes = request.app.get(PROBES)
            if probes is not None:
                probes.metrics.request(route, request.method, status, elapsed)
            structlog.contextvars.clear_contextvars()
    response.headers["X-Request-Id"] = request_id
    return response


def _from_http_exception(request: web.Request, exc: web.HTTPException) -> BrokerError:
    if exc.status == 404:  # noqa: PLR2004
        return NotFound(f"no such endpoint: {request.method} {request.path}")
    if exc.status == 405:  # noqa: PLR2004
        allowed = exc.headers.get("Allow", "")
        return MethodNotAllowed(
            f"{request.method} is not allowed on {request.path}",
            headers={"Allow": allowed} if allowed else None,
        )
    if exc.status == 413:  # noqa: PLR2004
        return PayloadTooLarge(f"request body is over the {MAX_BODY_BYTES // 1024} KiB limit")
    if exc.status == 415:  # noqa: PLR2004
        return UnsupportedMediaType(exc.text or "unsupported media type")
    return BadRequest(exc.reason or "bad request")


@web.middleware
async def problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map every error to a problem document; nothing internal ever reaches the caller."""
    try:
        return await handler(request)
    except BrokerError as exc:
        problem = exc
    except web.HTTPException as exc:
        if exc.status < 400:  # noqa: PLR2004 - redirects and the like pass through
            raise
        problem = _from_http_exception(request, exc)
    except Exception:
        log.exception("unhandled error", path=request.path)
        problem = BrokerError("internal error; the request id identifies it in the broker's logs")
    if _speaks_oauth(request):
        return _oauth_response(problem)
    return problem_response(problem, instance=request.path, request_id=request.get(REQUEST_ID))


def _speaks_oauth(request: web.Request) -> bool:
    """Whether the caller is an OAuth client, expecting the RFC 6749 section 5.2 error form."""
    if request.path in OAUTH_PATHS:
        return True
    return request.path in OAUTH_FORM_PATHS and request.content_type == FORM


_OAUTH_CODES = {
    400: "invalid_request",
    401: "invalid_client",
    403: "access_denied",
    404: "invalid_request",
    405: "invalid_request",
    413: "invalid_request",
    415: "invalid_request",
    429: "rate_limited",
    503: "temporarily_unavailable",
}


def _oauth_response(error: BrokerError) -> web.Response:
    """The RFC 6749 section 5.2 form, for the OAuth endpoints."""
    code = (
        error.error
        if isinstance(error, OAuthError)
        else _OAUTH_CODES.get(error.status, "server_error")
    )
    headers = dict(error.headers)
    return oauth_error_response(
        code, error.detail, status=error.status, headers=headers, extra=error.extra
    )


@web.middleware
async def body_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse bodies over 64 KiB before reading them (aiohttp also caps what it reads)."""
    length = request.content_length
    if length is not None and length > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"request body is over the {MAX_BODY_BYTES // 1024} KiB limit")
    return await handler(request)


def presented(request: web.Request) -> Presented:
    """What identity material the request carried.

    The client certificate chain is read once per connection: TLS renegotiation is off,
    so it cannot change for the connection's life.
    """
    return Presented(
        peer_chain=connection_chain(request.transport),
        authorization=request.headers.get("Authorization"),
        forwarded_client_cert=request.headers.get(request.app[XFCC_HEADER]),
    )


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every `/v1/` endpoint requires an authenticated caller."""
    if request.path.startswith("/v1/"):
        request[CALLER] = await request.app[PIPELINE].authenticate(
            presented(request), request_id=request[REQUEST_ID], remote=request.remote
        )
    return await handler(request)


def caller_of(request: web.Request) -> Caller:
    """The authenticated caller of a `/v1/` request."""
    try:
        return request[CALLER]
    except KeyError:  # pragma: no cover - the middleware guarantees it
        raise Unauthenticated("not authenticated", presented=False) from None


def middlewares() -> list[Callable[..., Awaitable[web.StreamResponse]]]:
    """The middleware chain, outermost first."""
    return [request_context, problems, body_limit, authenticate]
