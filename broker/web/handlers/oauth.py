"""The OAuth endpoints: RFC 8693 token exchange (`/v1/token`), RFC 7662 introspection.

Requests are form-encoded; errors use the RFC 6749 section 5.2 JSON form (rendered by the
error middleware for these paths), so standard OAuth clients understand them. The client
is the agent the TLS certificate or the JWT-SVID authenticated; a `client_id` parameter,
which RFC 8705 clients send, must name that same agent.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from aiohttp import web

from broker.constants import MAX_TOKEN_BYTES
from broker.context.requests import ExchangeRequest
from broker.domain import Caller, Secret
from broker.errors import OAuthError, PolicyDenied
from broker.web.keys import CATALOGUE, INTROSPECTION, PIPELINE, REQUEST_ID
from broker.web.middleware import caller_of
from broker.web.problem import json_response

__all__ = ["TOKEN_EXCHANGE", "client_of", "introspect", "read_form", "token"]

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105 - a URN
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105 - a URN
# What each subject_token_type means here, and so how the subject is validated: `jwt` is an
# end user's token from a configured issuer (any JWT it signs for the broker's audience);
# `access_token` is an access token this broker issued, narrowed for a sub-agent. Other
# types (`id_token`: OpenID Connect's own rules are not checked) are not accepted.
SUBJECT_TYPES = frozenset({JWT_TYPE, ACCESS_TOKEN_TYPE})
MAX_FORM_FIELDS = 32  # the OAuth requests here have at most nine parameters


async def read_form(request: web.Request) -> dict[str, str]:
    """A form-encoded body in UTF-8; each parameter at most once (RFC 6749 section 3.2).

    Parsed here rather than by `request.post()`, which raises UnicodeDecodeError (a 500)
    on raw non-UTF-8 bytes and silently turns percent-encoded ones into U+FFFD.

    Raises:
        OAuthError: Not a form, not UTF-8 (raw or percent-encoded), another charset,
            too many parameters, or a repeated parameter.
    """
    if request.content_type != "application/x-www-form-urlencoded":
        raise OAuthError("invalid_request", "the body must be application/x-www-form-urlencoded")
    charset = request.charset
    if charset is not None and charset.lower().replace("_", "-") not in {"utf-8", "utf8"}:
        raise OAuthError("invalid_request", "the form must be encoded in UTF-8")
    raw = await request.read()
    try:
        pairs = parse_qsl(
            raw.decode("utf-8").rstrip(),  # as aiohttp did: a trailing newline is not data
            keep_blank_values=True,
            strict_parsing=False,
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_FORM_FIELDS,
        )
    except UnicodeDecodeError:
        raise OAuthError("invalid_request", "the form is not valid UTF-8") from None
    except ValueError:
        raise OAuthError("invalid_request", "the form has too many parameters") from None
    out: dict[str, str] = {}
    for name, value in pairs:
        if name in out:
            raise OAuthError("invalid_request", f"parameter {name[:64]!r} is repeated")
        out[name] = value
    return out


def _required(form: dict[str, str], name: str) -> str:
    value = form.get(name, "")
    if not value:
        raise OAuthError("invalid_request", f"'{name}' is required")
    if len(value) > MAX_TOKEN_BYTES:
        raise OAuthError("invalid_request", f"'{name}' is too large")
    return value


def _target(form: dict[str, str], request: web.Request) -> str:
    """The tool named by `resource` (its audience URI) and/or `audience` (name or URI)."""
    catalogue = request.app[CATALOGUE]
    wanted = [v for v in (form.get("resource"), form.get("audience")) if v]
    if not wanted:
        raise OAuthError("invalid_request", "'resource' or 'audience' is required (the tool)")
    names: set[str] = set()
    for value in wanted:
        match = catalogue.find(value)
        if match is None:
            raise OAuthError("invalid_target", f"no tool is known as {value!r}")
        names.add(match.name)
    if len(names) != 1:
        raise OAuthError("invalid_target", "'resource' and 'audience' name different tools")
    name = names.pop()
    if name not in catalogue.exchangeable:
        raise OAuthError("invalid_target", f"tool {name!r} does not issue tokens by exchange")
    return name


async def client_of(request: web.Request, form: dict[str, str]) -> Caller:
    """The authenticated client, after checking the `client_id` parameter, if any.

    RFC 8705 section 2: with certificate-based client authentication, the certificate's
    subject is the client; a `client_id` naming anyone else is refused, and audited, never
    silently ignored. The same holds for a JWT-SVID.

    Raises:
        OAuthError: `invalid_client` (401).
        Unavailable: The refusal could not be audited.
    """
    caller = caller_of(request)
    await request.app[PIPELINE].check_client_id(
        caller, form.get("client_id"), request_id=request[REQUEST_ID], remote=request.remote
    )
    return caller


def _subject(form: dict[str, str], request: web.Request) -> tuple[str, bool]:
    """The subject token and whether it is this broker's own (by its declared type).

    Refused if it is not of the declared `subject_token_type`.
    """
    subject = _required(form, "subject_token")
    declared = _required(form, "subject_token_type")
    if declared not in SUBJECT_TYPES:
        raise OAuthError(
            "invalid_request",
            f"unsupported subject_token_type; use {JWT_TYPE} for an end user's token "
            f"or {ACCESS_TOKEN_TYPE} for an access token of this broker",
        )
    ours = request.app[PIPELINE].context.is_broker_token(subject)
    if declared == ACCESS_TOKEN_TYPE and not ours:
        raise OAuthError(
            "invalid_request",
            f"subject_token_type {ACCESS_TOKEN_TYPE} is for access tokens of this broker; "
            f"an end user's token is exchanged as {JWT_TYPE}",
        )
    if declared == JWT_TYPE and ours:
        raise OAuthError(
            "invalid_request",
            f"an access token of this broker is exchanged as subject_token_type "
            f"{ACCESS_TOKEN_TYPE}",
        )
    return subject, ours


def _oauth_code(reasons: list[str]) -> str:
    if any(
        r.startswith(("user_token", "subject_token"))
        or r in {"user_required", "delegation_too_deep", "actor_not_authorized"}
        for r in reasons
    ):
        return "invalid_grant"
    if "scope_not_allowed" in reasons:
        return "invalid_scope"
    return "invalid_target"


async def token(request: web.Request) -> web.Response:
    """RFC 8693 token exchange."""
    form = await read_form(request)
    caller = await client_of(request, form)
    grant_type = _required(form, "grant_type")
    if grant_type != TOKEN_EXCHANGE:
        raise OAuthError("unsupported_grant_type", f"grant_type {grant_type!r} is not supported")
    subject, delegated = _subject(form, request)
    actor = form.get("actor_token") or None
    if actor is not None and form.get("actor_token_type") != JWT_TYPE:
        raise OAuthError("invalid_request", f"actor_token_type must be {JWT_TYPE}")
    if actor is None and form.get("actor_token_type"):
        raise OAuthError("invalid_request", "actor_token_type without actor_token")
    requested = form.get("requested_token_type")
    if requested and requested not in {ACCESS_TOKEN_TYPE, JWT_TYPE}:
        raise OAuthError("invalid_request", "only access tokens are issued")
    scope = form.get("scope")
    exchange = ExchangeRequest(
        subject_token=Secret(subject),
        tool=_target(form, request),
        scopes=tuple(scope.split()) if scope else None,
        actor_token=Secret(actor) if actor else None,
        delegated=delegated,
    )
    try:
        issued = await request.app[PIPELINE].exchange(
            caller, exchange, request_id=request[REQUEST_ID], remote=request.remote
        )
    except PolicyDenied as denied:
        raise OAuthError(
            _oauth_code(denied.reasons),
            denied.detail,
            extra={"decision_id": denied.decision_id, "reasons": denied.reasons},
        ) from None
    credential = issued.credentials[0]
    assert credential.secret is not None
    grant = issued.decision.tools[0]
    response = json_response(
        {
            "access_token": credential.secret.reveal(),
            "issued_token_type": ACCESS_TOKEN_TYPE,
            "token_type": "Bearer",
            "expires_in": issued.decision.ttl_granted,
            "scope": " ".join(grant.scopes),
        }
    )
    response.headers["Pragma"] = "no-cache"
    return response


async def introspect(request: web.Request) -> web.Response:
    """RFC 7662 introspection (`{"active": false}` alone when not active or not yours)."""
    form = await read_form(request)
    caller = await client_of(request, form)
    body = await request.app[INTROSPECTION].introspect(caller, _required(form, "token"))
    return json_response(body)
