"""`GET /v1/whoami`: the identity the broker sees for the caller (a debugging aid)."""

from __future__ import annotations

from aiohttp import web

from broker.clock import rfc3339
from broker.web.middleware import caller_of
from broker.web.problem import json_response

__all__ = ["whoami"]


async def whoami(request: web.Request) -> web.Response:
    """Return the authenticated caller's SPIFFE ID and how it authenticated."""
    caller = caller_of(request)
    body: dict[str, object] = {
        "spiffe_id": caller.spiffe_id,
        "trust_domain": caller.trust_domain,
        "method": caller.method.value,
        "svid_expires_at": rfc3339(caller.expires_at),
    }
    if caller.x509_sha256:
        body["x509_sha256"] = caller.x509_sha256
    if caller.jwt_svid_jti:
        body["jwt_svid_jti"] = caller.jwt_svid_jti
    if caller.via_proxy:
        body["via_proxy"] = caller.via_proxy
    return json_response(body)
