"""Human approval (CONTRACT section 8): approvers decide, the requesting agent collects.

`POST /v1/admin/approvals/{id}` `{"decision": "approve"|"deny", "reason": "...",
"user_token": "..."}` by an approver (an admin SPIFFE ID, or any caller with the token of
a user in an approver group); `GET /v1/approvals/{id}` by the requesting agent: 202
while pending, 201 with the credentials once, 403 when denied, 410 when expired or
already collected.
"""

from __future__ import annotations

from aiohttp import web

from broker.constants import MAX_TOKEN_BYTES as MAX_TOKEN
from broker.domain import Secret
from broker.errors import BadRequest
from broker.pipeline import Pending
from broker.web.handlers.credentials import issued_json, read_json_object
from broker.web.keys import PIPELINE, REQUEST_ID
from broker.web.middleware import caller_of
from broker.web.problem import json_response

__all__ = ["collect", "decide"]

MAX_ID = 64
MAX_REASON = 512


def _approval_id(request: web.Request) -> str:
    value = request.match_info["approval_id"]
    if not value or len(value) > MAX_ID:
        raise BadRequest("not an approval id")
    return value


async def decide(request: web.Request) -> web.Response:
    """Approve or deny a pending approval."""
    body = await read_json_object(request)
    unknown = sorted(set(body) - {"decision", "reason", "user_token"})
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}")
    decision = body.get("decision")
    if decision not in {"approve", "deny"}:
        raise BadRequest("'decision' must be 'approve' or 'deny'")
    reason = body.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON):
        raise BadRequest(f"'reason' must be a string of at most {MAX_REASON} characters")
    token = body.get("user_token")
    if token is not None and (not isinstance(token, str) or not token or len(token) > MAX_TOKEN):
        raise BadRequest("'user_token' must be a non-empty string of at most 16 KiB")
    record = await request.app[PIPELINE].decide_approval(
        caller_of(request),
        _approval_id(request),
        approve=decision == "approve",
        reason=reason,
        request_id=request[REQUEST_ID],
        remote=request.remote,
        user_token=Secret(token) if token is not None else None,
    )
    return json_response(
        {
            "approval_id": record.approval_id,
            "decision_id": record.decision_id,
            "status": record.status,
            "approver": record.approver,
        }
    )


async def collect(request: web.Request) -> web.Response:
    """The requesting agent's poll."""
    result = await request.app[PIPELINE].collect(
        caller_of(request),
        _approval_id(request),
        request_id=request[REQUEST_ID],
        remote=request.remote,
    )
    if isinstance(result, Pending):
        return json_response(result.to_json(), status=202)
    return json_response(issued_json(result), status=201)
