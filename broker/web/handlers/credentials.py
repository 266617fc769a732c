"""`POST /v1/credentials`: strict parsing, then the pipeline."""

from __future__ import annotations

import json
import re

from aiohttp import web

from broker.clock import rfc3339
from broker.constants import MAX_TOKEN_BYTES, TOOL_NAME_PATTERN
from broker.context.requests import CredentialRequest
from broker.domain import Credential, Secret
from broker.errors import BadRequest
from broker.pipeline import Issued, Pending
from broker.strictjson import MAX_JSON_DEPTH, too_deep, unique_members
from broker.web.keys import CATALOGUE, PIPELINE, REQUEST_ID
from broker.web.middleware import caller_of
from broker.web.problem import json_response

__all__ = ["parse_credential_request", "post_credentials", "read_json_object"]

MAX_TOOLS = 16
MAX_TTL_INPUT = 10**9
FIELDS = {"tools", "ttl_seconds", "user_token", "session_id", "reason"}


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


async def read_json_object(request: web.Request) -> dict[str, object]:
    """Read the body as one JSON object, whatever the declared content type.

    (curl's `-d` declares a form; this endpoint never parses forms, so the body is read
    as JSON and the content type is only named when the body is not JSON.)

    Raises:
        BadRequest: Not UTF-8 JSON, not an object, NaN/Infinity, duplicate keys, or
            nested deeper than MAX_JSON_DEPTH.
    """
    raw = await request.read()
    hint = (
        ""
        if request.content_type in {"application/json", ""}
        else (f" (Content-Type was {request.content_type}; send application/json)")
    )
    try:
        text = raw.decode("utf-8")  # RFC 8259 section 8.1; json.loads would guess UTF-16/32
    except UnicodeDecodeError:
        raise BadRequest(f"request body is not UTF-8{hint}") from None
    if too_deep(raw):
        raise BadRequest(f"request body nests arrays/objects deeper than {MAX_JSON_DEPTH} levels")
    try:
        body = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=unique_members)
    except ValueError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}{hint}") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def _optional_text(body: dict[str, object], name: str, limit: int) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"'{name}' must be a string")
    if len(value) > limit:
        raise BadRequest(f"'{name}' must be at most {limit} characters")
    return value


def _tools(tools: object, known_tools: frozenset[str]) -> list[str]:
    if tools is None:
        raise BadRequest("'tools' is required")
    if not isinstance(tools, list):
        raise BadRequest("'tools' must be a list of tool names")
    if not 1 <= len(tools) <= MAX_TOOLS:
        raise BadRequest(f"'tools' must name 1 to {MAX_TOOLS} tools")
    for tool in tools:
        if not isinstance(tool, str) or not re.fullmatch(TOOL_NAME_PATTERN, tool):
            raise BadRequest(
                "'tools' entries must be tool names (lower-case, at most 64 characters)"
            )
        if tool not in known_tools:
            raise BadRequest(f"unknown tool {tool!r}")
    if len(set(tools)) != len(tools):
        raise BadRequest("'tools' names a tool twice")
    return [str(t) for t in tools]


def parse_credential_request(
    body: dict[str, object], known_tools: frozenset[str]
) -> CredentialRequest:
    """Validate a credential request body.

    Raises:
        BadRequest: With the precise problem.
    """
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}")
    tools = _tools(body.get("tools"), known_tools)
    ttl = body.get("ttl_seconds")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int)):
        raise BadRequest("'ttl_seconds' must be an integer")
    if isinstance(ttl, int) and ttl < 1:
        raise BadRequest("'ttl_seconds' must be at least 1")
    if isinstance(ttl, int) and ttl > MAX_TTL_INPUT:
        raise BadRequest(f"'ttl_seconds' must be at most {MAX_TTL_INPUT}")

    user_token = _optional_text(body, "user_token", MAX_TOKEN_BYTES)
    if user_token is not None and not user_token.strip():
        raise BadRequest("'user_token' must not be empty")
    return CredentialRequest(
        tools=tuple(tools),
        ttl_seconds=ttl,
        user_token=Secret(user_token) if user_token is not None else None,
        session_id=_optional_text(body, "session_id", 128),
        reason=_optional_text(body, "reason", 512),
    )


def _credential_json(credential: Credential) -> dict[str, object]:
    body: dict[str, object] = {"tool": credential.tool, "type": credential.type}
    if credential.secret is not None:
        body["token"] = credential.secret.reveal()
    if credential.data:
        body["data"] = {name: value.reveal() for name, value in credential.data}
    body["credential_id"] = credential.credential_id
    body["expires_at"] = rfc3339(credential.expires_at)
    return body


def issued_json(issued: Issued) -> dict[str, object]:
    """The 201 body (contract section 3)."""
    return {
        "decision_id": issued.decision.decision_id,
        "expires_in": issued.decision.ttl_granted,
        "credentials": [_credential_json(c) for c in issued.credentials],
    }


async def post_credentials(request: web.Request) -> web.Response:
    """Issue per-execution credentials for the authenticated agent."""
    body = await read_json_object(request)
    parsed = parse_credential_request(body, request.app[CATALOGUE].names)
    issued = await request.app[PIPELINE].issue(
        caller_of(request), parsed, request_id=request[REQUEST_ID], remote=request.remote
    )
    if isinstance(issued, Pending):
        return json_response(issued.to_json(), status=202)
    return json_response(issued_json(issued), status=201)
