"""`POST /v1/revoke` (owner or admin) and `POST /v1/admin/agents/revoke` (admin)."""

from __future__ import annotations

from aiohttp import web

from broker.clock import rfc3339
from broker.errors import BadRequest
from broker.web.handlers.credentials import read_json_object
from broker.web.handlers.oauth import read_form
from broker.web.keys import REQUEST_ID, REVOCATION
from broker.web.middleware import caller_of
from broker.web.problem import json_response

__all__ = ["revoke", "revoke_agent"]


def _only(body: dict[str, object], field: str) -> str:
    unknown = sorted(set(body) - {field})
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}")
    value = body.get(field)
    if not isinstance(value, str) or not value or len(value) > 2048:  # noqa: PLR2004
        raise BadRequest(f"'{field}' is required (a non-empty string)")
    return value


async def revoke(request: web.Request) -> web.Response:
    """Revoke one credential, named by `credential_id` (JSON or form) or `token` (RFC 7009)."""
    revocation = request.app[REVOCATION]
    caller = caller_of(request)
    if request.content_type == "application/x-www-form-urlencoded":
        form = await read_form(request)
        token = form.get("token")
        if token:
            found = revocation.credential_id_of(token)
            if found is None:
                # RFC 7009 section 2.2: an invalid token is not an error for the client.
                return json_response({"revoked": False})
            credential_id = found
        else:
            credential_id = _only(
                {k: v for k, v in form.items() if k != "token_type_hint"}, "credential_id"
            )
    else:
        credential_id = _only(await read_json_object(request), "credential_id")
    record = await revocation.revoke(
        caller, credential_id, request_id=request[REQUEST_ID], remote=request.remote
    )
    return json_response({"credential_id": record.credential_id, "revoked": True})


async def revoke_agent(request: web.Request) -> web.Response:
    """Revoke an agent: its next request is 401, its live credentials inactive."""
    spiffe_id = _only(await read_json_object(request), "spiffe_id")
    result = await request.app[REVOCATION].revoke_agent(
        caller_of(request), spiffe_id, request_id=request[REQUEST_ID], remote=request.remote
    )
    return json_response(
        {
            "spiffe_id": result.spiffe_id,
            "revoked_until": rfc3339(result.until),
            "credentials_revoked": len(result.credentials),
        }
    )
