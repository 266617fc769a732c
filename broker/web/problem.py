"""The one place errors become responses: RFC 9457 `application/problem+json`.

Also the OAuth error form (RFC 6749 section 5.2) for the OAuth endpoints, which standard
OAuth clients expect instead.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from aiohttp import web

from broker.errors import BrokerError

__all__ = ["PROBLEM_TYPE_PREFIX", "json_response", "oauth_error_response", "problem_response"]

PROBLEM_TYPE_PREFIX = "urn:credential-broker:problem:"
PROBLEM_CONTENT_TYPE = "application/problem+json"


_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)  # built once


def _dumps(value: object) -> str:
    return _COMPACT.encode(value)


def problem_response(error: BrokerError, *, instance: str, request_id: str | None) -> web.Response:
    """Render a `BrokerError` as a problem document.

    Args:
        error: The error; its `detail` and `extra` are caller-safe by construction.
        instance: The request path (RFC 9457 `instance`).
        request_id: The request id, so support can find the log line.
    """
    body: dict[str, object] = {
        "type": PROBLEM_TYPE_PREFIX + error.code,
        "title": error.title,
        "status": error.status,
        "detail": error.detail,
        "instance": instance,
    }
    if request_id is not None:
        body["request_id"] = request_id
    for key, value in error.extra.items():
        body.setdefault(key, value)
    response = web.Response(
        status=error.status,
        text=_dumps(body),
        content_type=PROBLEM_CONTENT_TYPE,
        headers={"Cache-Control": "no-store"},
    )
    response.headers.update(error.headers)
    return response


def oauth_error_response(
    error: str,
    description: str,
    *,
    status: int = 400,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, object] | None = None,
) -> web.Response:
    """Render an OAuth 2.0 error (RFC 6749 section 5.2), with optional extension members."""
    body: dict[str, object] = {"error": error, "error_description": description}
    for key, value in (extra or {}).items():
        body.setdefault(key, value)
    response = web.Response(
        status=status,
        text=_dumps(body),
        content_type="application/json",
        headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
    )
    response.headers.update(headers or {})
    return response


def json_response(body: object, *, status: int = 200, no_store: bool = True) -> web.Response:
    """A compact JSON response, not cached by default (credentials are in bodies)."""
    response = web.Response(status=status, text=_dumps(body), content_type="application/json")
    if no_store:
        response.headers["Cache-Control"] = "no-store"
    return response
