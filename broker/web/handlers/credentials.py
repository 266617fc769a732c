"""`POST /v1/credentials`: strict parsing, then the pipeline."""

from __future__ import annotations

import json
import operator
import re
from itertools import accumulate, count

from aiohttp import web

from broker.config.settings import TOOL_NAME_PATTERN
from broker.domain import Credential, Secret
from broker.errors import BadRequest
from broker.pipeline import CredentialRequest, Issued
from broker.web.keys import REQUEST_ID, RUNTIME
from broker.web.middleware import caller_of
from broker.web.problem import json_response

__all__ = ["parse_credential_request", "post_credentials", "read_json_object"]

MAX_TOOLS = 16
MAX_TTL_INPUT = 10**9
MAX_USER_TOKEN = 16 * 1024
MAX_JSON_DEPTH = 32  # the request schemas nest two levels; json.loads recurses per level
FIELDS = {"tools", "ttl_seconds", "user_token", "session_id", "reason"}
_OPENERS_CLOSERS = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
_DEPTH_STEPS = bytes.maketrans(b"[]", b"\x02\x00")


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _too_deep(raw: bytes) -> bool:
    """Whether arrays/objects nest deeper than MAX_JSON_DEPTH, found without parsing.

    Strings are cut out first (escaped backslashes, then escaped quotes, then split on
    quotes), so brackets inside them do not count; the depth is then the largest prefix
    sum of +1 per opening and -1 per closing bracket. Every step runs in C: a 64 KiB body
    costs about as much as json.loads of it, and a legitimate body (at most 32 brackets)
    only the two counts.
    """
    if raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH:
        return False
    outside = b"".join(raw.replace(b"\\\\", b"").replace(b'\\"', b"").split(b'"')[::2])
    brackets = outside.translate(_OPENERS_CLOSERS, _NOT_BRACKETS)
    if b"[" * (MAX_JSON_DEPTH + 1) in brackets:
        return True
    steps = brackets.translate(_DEPTH_STEPS)  # "[" -> 2, "]" -> 0: running sum - index = depth
    return max(map(operator.sub, accumulate(steps), count(1)), default=0) > MAX_JSON_DEPTH


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


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
    if _too_deep(raw):
        raise BadRequest(f"request body nests arrays/objects deeper than {MAX_JSON_DEPTH} levels")
    try:
        body = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)
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

    user_token = _optional_text(body, "user_token", MAX_USER_TOKEN)
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
    body["expires_at"] = credential.expires_at.isoformat(timespec="seconds").replace("+00:00", "Z")
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
    runtime = request.app[RUNTIME]
    body = await read_json_object(request)
    parsed = parse_credential_request(body, frozenset(t.name for t in runtime.settings.tools))
    issued = await runtime.pipeline.issue(
        caller_of(request), parsed, request_id=request[REQUEST_ID], remote=request.remote
    )
    return json_response(issued_json(issued), status=201)
