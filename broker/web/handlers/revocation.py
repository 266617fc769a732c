"""`POST /v1/revoke` (owner or admin) and `POST /v1/admin/agents/revoke` (admin).

`/v1/revoke` takes the broker's own JSON body `{"credential_id": ...}`, or a form: RFC 7009
`token=` (with an optional `token_type_hint`), or `credential_id=`. A form request is an
OAuth request: its errors use the RFC 6749 section 5.2 form (the error middleware knows),
and a `client_id` in it must name the authenticated agent (RFC 8705).

Nothing revoked is one answer, `200 {"revoked": false}`, whatever the reason: an unknown
or expired credential, an invalid token, or another agent's live credential. Telling
those apart would let any agent learn which credential ids are live; the refusal of a
known id or a valid token is audited instead (`credential.revoke_refused`).
"""

from __future__ import annotations

from aiohttp import web

from broker.clock import rfc3339
from broker.constants import MAX_TOKEN_BYTES
from broker.errors import BadRequest
from broker.lifecycle.revocation import Revocation
from broker.web.handlers.credentials import read_json_object
from broker.web.handlers.oauth import client_of, read_form
from broker.web.keys import REQUEST_ID, REVOCATION
from broker.web.middleware import caller_of
from broker.web.problem import json_response

__all__ = ["revoke", "revoke_agent"]

FORM = "application/x-www-form-urlencoded"
NOT_REVOKED = {"revoked": False}
# RFC 6749 section 3.2: unrecognised parameters are ignored at OAuth endpoints; the
# broker's own `credential_id` form, like its JSON body, names what it takes.
_FORM_EXTRAS = frozenset({"client_id", "token_type_hint"})


def _only(body: dict[str, object], field: str) -> str:
    unknown = sorted(set(body) - {field})
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}")
    value = body.get(field)
    if not isinstance(value, str) or not value or len(value) > 2048:  # noqa: PLR2004
        raise BadRequest(f"'{field}' is required (a non-empty string)")
    return value


def _from_form(revocation: Revocation, form: dict[str, str]) -> str | None:
    """The credential id a form names; None for an RFC 7009 token that is not valid."""
    if "token" not in form:
        return _only({k: v for k, v in form.items() if k not in _FORM_EXTRAS}, "credential_id")
    if "credential_id" in form:
        raise BadRequest("give either 'token' (RFC 7009) or 'credential_id', not both")
    token = form["token"]
    if not token or len(token) > MAX_TOKEN_BYTES:
        raise BadRequest("'token' is required (at most 16 KiB)")
    # RFC 7009 section 2.2: an invalid token is not an error for the client.
    return revocation.credential_id_of(token)


async def revoke(request: web.Request) -> web.Response:
    """Revoke one credential, named by `credential_id` (JSON or form) or `token` (RFC 7009)."""
    revocation = request.app[REVOCATION]
    if request.content_type == FORM:
        form = await read_form(request)
        caller = await client_of(request, form)
        credential_id = _from_form(revocation, form)
    else:
        caller = caller_of(request)
        credential_id = _only(await read_json_object(request), "credential_id")
    if credential_id is None:
        return json_response(NOT_REVOKED)
    record = await revocation.revoke(
        caller, credential_id, request_id=request[REQUEST_ID], remote=request.remote
    )
    if record is None:
        return json_response(NOT_REVOKED)
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
