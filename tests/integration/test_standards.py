"""The broker as standard OAuth software sees it (RFC 8414, 8693, 8705, 7009, 7662, 9068).

authlib is the client, joserfc and authlib are the resource servers.

authlib and requests are synchronous: every call runs in a thread while the in-process
broker serves on this event loop. `trust_env = False`: REQUESTS_CA_BUNDLE would otherwise
override `Session.verify`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
import yaml
from aiohttp import web
from authlib.integrations.requests_client import OAuth2Session, OAuthError
from authlib.oauth2.auth import encode_none
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata
from authlib.oauth2.rfc9068 import JWTBearerTokenValidator
from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet

from broker.clock import SystemClock
from broker.config.settings import ListenSettings, load_settings
from broker.dev.trust_domain import init_trust_domain, mint_jwt_svid
from broker.issuers.jwt.signer import encoded_header, sign_compact
from broker.web.app import create_app
from broker.web.keys import RUNTIME
from tests.support import leaks
from tests.support.broker import InProcessBroker, free_port
from tests.support.devbroker import Agent, DevBroker, Response

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ACCESS = "urn:ietf:params:oauth:token-type:access_token"
ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"
CUSTOMER_DATA = "https://customer-data.example.org"
CLAIMS = "spiffe://example.org/agent/claims"
ANALYTICS = "spiffe://example.org/agent/analytics"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@asynccontextmanager
async def served_at_its_issuer(root: Path, *, sub_agents: bool = False) -> AsyncIterator[DevBroker]:
    """The dev trust domain served at its issuer URL, so its metadata is usable as is.

    The port is chosen first: the default issuer is the listener's URL.
    """
    td, _ = init_trust_domain(root, None, SystemClock())
    if sub_agents:  # analytics may narrow a claims token for the same user (depth 1)
        policy = yaml.safe_load(td.policy.read_text())
        policy["rules"].append(
            {
                "id": "analytics-as-sub-agent",
                "agents": [ANALYTICS],
                "tools": ["customer_data_api"],
                "user": {"required": True},
                "max_delegation_depth": 1,
            }
        )
        td.policy.write_text(yaml.safe_dump(policy))
    leaks.watch_audit(td.root)
    port = free_port()
    settings = dataclasses.replace(
        load_settings(td.config), listen=ListenSettings("127.0.0.1", port)
    )
    app = create_app(settings)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=app[RUNTIME].tls.context)
        await site.start()
        yield DevBroker(td, InProcessBroker(f"https://127.0.0.1:{port}", app), settings)
    finally:
        await runner.cleanup()


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[DevBroker]:
    """The development trust domain, served at its issuer URL."""
    async with served_at_its_issuer(tmp_path / "dev") as running:
        yield running


@pytest.fixture
async def delegating(tmp_path: Path) -> AsyncIterator[DevBroker]:
    """The same, with a rule letting analytics act as a sub-agent of claims."""
    async with served_at_its_issuer(tmp_path / "dev", sub_agents=True) as running:
        yield running


# -- helpers -----------------------------------------------------------------------------------


def http(broker: DevBroker, agent: str | None = None) -> requests.Session:
    """A requests session trusting the dev CA, with an agent's certificate if named."""
    session = requests.Session()
    session.trust_env = False
    session.verify = str(broker.td.ca_bundle)
    if agent is not None:
        directory = broker.td.agent_dir(agent) if agent != "admin" else broker.td.root / "admin"
        session.cert = (str(directory / "svid.pem"), str(directory / "key.pem"))
    return session


def authlib_client(broker: DevBroker, agent: str) -> OAuth2Session:
    """An authlib OAuth client, authenticated by the agent's X.509-SVID.

    RFC 8705 `tls_client_auth`: the TLS client certificate, and `client_id` in the body.
    """
    client = OAuth2Session(
        client_id=broker.td.agent_id(agent),
        token_endpoint_auth_method="tls_client_auth",
        revocation_endpoint_auth_method="tls_client_auth",
    )
    client.register_client_auth_method(("tls_client_auth", encode_none))
    client.trust_env = False
    client.verify = str(broker.td.ca_bundle)
    directory = broker.td.agent_dir(agent)
    client.cert = (str(directory / "svid.pem"), str(directory / "key.pem"))
    return client


def discover(broker: DevBroker) -> AuthorizationServerMetadata:
    """RFC 8414 section 3: the metadata of an issuer without a path, validated by authlib."""
    with http(broker) as session:
        response = session.get(f"{broker.url}/.well-known/oauth-authorization-server", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    metadata = AuthorizationServerMetadata(response.json())
    metadata.validate()
    return metadata


class ResourceServer(JWTBearerTokenValidator):  # type: ignore[misc]
    """authlib's RFC 9068 validator, its keys found through the issuer's metadata."""

    def __init__(self, issuer: str, audience: str, jwks: dict[str, Any]) -> None:
        super().__init__(issuer=issuer, resource_server=audience)
        self.keys = KeySet.import_key_set(jwks)

    def get_jwks(self) -> KeySet:
        return self.keys


def verify_as_resource_servers(broker: DevBroker, token: str, audience: str) -> dict[str, Any]:
    """Verify a broker token as two RFC 9068 resource servers would, at their defaults.

    joserfc's `jwt.decode` with its claims registry, and authlib's `JWTBearerTokenValidator`;
    both find the keys through RFC 8414 discovery.
    """
    metadata = discover(broker)
    with http(broker) as session:
        jwks = session.get(metadata["jwks_uri"], timeout=10).json()
    issuer = metadata["issuer"]

    decoded = jose_jwt.decode(token, KeySet.import_key_set(jwks))  # default algorithms
    assert decoded.header["typ"] == "at+jwt"
    assert decoded.header["alg"] == "ES256"
    jose_jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": issuer},
        aud={"essential": True, "value": audience},
        exp={"essential": True},
        iat={"essential": True},
        sub={"essential": True},
        client_id={"essential": True},
        jti={"essential": True},
    ).validate(decoded.claims)

    validator = ResourceServer(issuer, audience, jwks)
    claims = validator.authenticate_token(token)
    validator.validate_token(claims, scopes=None, request=None)
    return dict(claims)


async def form(
    agent: Agent, path: str, fields: dict[str, str] | list[tuple[str, str]], **headers: str
) -> Response:
    return await agent.request(
        "POST", path, data=urllib.parse.urlencode(fields), headers={**FORM, **headers}
    )


async def issue(broker: DevBroker, agent: str = "claims") -> dict[str, Any]:
    body: dict[str, Any] = {"tools": ["customer_data_api"], "user_token": broker.user_token()}
    if agent == "analytics":
        body = {"tools": ["analytics_api"]}
    response = await broker.agent(agent).credentials(body)
    assert response.status == 201, response.body
    return response.body["credentials"][0]  # type: ignore[no-any-return]


def exchange_fields(subject: str, subject_type: str = JWT_TYPE, **extra: str) -> dict[str, str]:
    return {
        "grant_type": EXCHANGE,
        "subject_token": subject,
        "subject_token_type": subject_type,
        "resource": CUSTOMER_DATA,
        **extra,
    }


def svid_for(broker: DevBroker, agent: str) -> str:
    svid = mint_jwt_svid(
        broker.td, agent=agent, audience=broker.td.broker_id, ttl=60, clock=SystemClock()
    )
    leaks.remember(svid)
    return svid


# -- 1, 6: real clients -------------------------------------------------------------------------


async def test_minted_tokens_verify_with_joserfc_and_authlib_rfc9068_validators(
    broker: DevBroker,
) -> None:
    """A credential from POST /v1/credentials is ES256 and passes both RFC 9068 validators."""
    credential = await issue(broker)
    claims = await asyncio.to_thread(
        verify_as_resource_servers, broker, credential["token"], CUSTOMER_DATA
    )
    assert claims["sub"] == "alice"
    assert claims["client_id"] == CLAIMS
    assert claims["jti"] == credential["credential_id"]


def _authlib_story(broker: DevBroker, user_token: str) -> dict[str, Any]:
    """Exchange, verify, introspect, revoke, introspect again: authlib from end to end."""
    metadata = discover(broker)
    with authlib_client(broker, "claims") as client:
        token = client.fetch_token(
            metadata["token_endpoint"],
            grant_type=EXCHANGE,
            subject_token=user_token,
            subject_token_type=JWT_TYPE,
            resource=CUSTOMER_DATA,
        )
        leaks.remember(token["access_token"])
        claims = verify_as_resource_servers(broker, token["access_token"], CUSTOMER_DATA)
        active = client.introspect_token(
            metadata["introspection_endpoint"],
            token=token["access_token"],
            token_type_hint="access_token",
        )
        revoked = client.revoke_token(
            metadata["revocation_endpoint"],
            token=token["access_token"],
            token_type_hint="access_token",
        )
        inactive = client.introspect_token(
            metadata["introspection_endpoint"], token=token["access_token"]
        )
        try:
            client.fetch_token(
                metadata["token_endpoint"],
                grant_type=EXCHANGE,
                subject_token=user_token,
                subject_token_type=JWT_TYPE,
                resource="https://nowhere.example.org",
            )
        except OAuthError as exc:
            refused = exc.error
        else:  # pragma: no cover - the assertion below reports it
            refused = None
    return {
        "token": dict(token),
        "claims": claims,
        "active": (active.status_code, active.json()),
        "revoked": (revoked.status_code, revoked.json()),
        "inactive": (inactive.status_code, inactive.json()),
        "refused": refused,
    }


async def test_authlib_drives_exchange_introspection_and_revocation(broker: DevBroker) -> None:
    """An authlib OAuth2Session over mTLS: RFC 8693, 7662 and 7009 work as it expects."""
    story = await asyncio.to_thread(_authlib_story, broker, broker.user_token("alice"))
    token = story["token"]
    assert token["token_type"] == "Bearer"
    assert token["issued_token_type"] == ACCESS
    assert 0 < token["expires_in"] <= 300
    assert story["claims"]["sub"] == "alice"
    assert story["claims"]["act"] == {"sub": CLAIMS}
    status, body = story["active"]
    assert status == 200
    assert body["active"] is True
    assert body["client_id"] == CLAIMS
    assert story["revoked"][0] == 200
    assert story["revoked"][1]["revoked"] is True
    assert story["inactive"] == (200, {"active": False})
    assert story["refused"] == "invalid_target"
    events = [r["event"] for r in broker.audit_records()]
    assert "credential.issued" in events
    assert "credential.revoked" in events


# -- 2: RFC 8414 metadata ------------------------------------------------------------------------


async def test_metadata_is_the_same_valid_rfc8414_document_at_both_paths(
    broker: DevBroker,
) -> None:
    """Both well-known paths serve one document that authlib's RFC 8414 validation accepts."""
    anonymous = broker.agent(None)
    rfc8414 = await anonymous.request("GET", "/.well-known/oauth-authorization-server")
    oidc = await anonymous.request("GET", "/.well-known/openid-configuration")
    assert rfc8414.status == 200, rfc8414.body
    assert rfc8414.content_type == "application/json"
    assert oidc.status == 200
    assert rfc8414.body == oidc.body
    body = rfc8414.body
    AuthorizationServerMetadata(body).validate()
    assert body["issuer"] == broker.url
    assert body["token_endpoint"] == f"{broker.url}/v1/token"
    assert body["introspection_endpoint"] == f"{broker.url}/v1/introspect"
    assert body["revocation_endpoint"] == f"{broker.url}/v1/revoke"
    assert body["jwks_uri"] == f"{broker.url}/.well-known/jwks.json"
    assert body["grant_types_supported"] == [EXCHANGE]
    # No authorization endpoint: "none" (the registered response type that returns nothing)
    # is the one true value of a member RFC 8414 requires.
    assert body["response_types_supported"] == ["none"]
    assert "authorization_endpoint" not in body
    assert "code_challenge_methods_supported" not in body
    for member in (
        "token_endpoint_auth_methods_supported",
        "introspection_endpoint_auth_methods_supported",
        "revocation_endpoint_auth_methods_supported",
    ):
        assert body[member][0] == "tls_client_auth"  # RFC 8705 section 2.1
        # JWT-SVID bearer: no registered name exists; RFC 7591 allows an absolute URI.
        assert body[member][1].startswith("urn:")
    assert body["tls_client_certificate_bound_access_tokens"] is True


# -- 3: RFC 8705 client_id -------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/token", "/v1/introspect", "/v1/revoke"])
@pytest.mark.parametrize("method", ["mtls", "jwt_svid"])
async def test_client_id_naming_another_agent_is_invalid_client(
    broker: DevBroker, path: str, method: str
) -> None:
    """A client_id other than the authenticated SPIFFE ID: 401 invalid_client, audited."""
    credential = await issue(broker)
    fields = {
        "/v1/token": exchange_fields(broker.user_token()),
        "/v1/introspect": {"token": credential["token"]},
        "/v1/revoke": {"token": credential["token"]},
    }[path]
    if method == "mtls":
        agent, headers = broker.agent("claims"), {}
    else:
        agent, headers = (
            broker.agent(None),
            {"Authorization": f"Bearer {svid_for(broker, 'claims')}"},
        )
    response = await form(agent, path, {**fields, "client_id": ANALYTICS}, **headers)
    assert response.status == 401, response.body
    assert response.content_type == "application/json"
    assert response.body["error"] == "invalid_client"
    assert ANALYTICS in response.body["error_description"]
    record = broker.audit_records()[-1]
    assert record["event"] == "auth.failed"
    assert record["agent"]["spiffe_id"] == CLAIMS
    # Nothing happened: the credential is still active for its owner.
    still = await form(broker.agent("claims"), "/v1/introspect", {"token": credential["token"]})
    assert still.body["active"] is True


@pytest.mark.parametrize("path", ["/v1/token", "/v1/introspect", "/v1/revoke"])
async def test_client_id_naming_the_caller_is_accepted(broker: DevBroker, path: str) -> None:
    """The client's own SPIFFE ID as client_id (as RFC 8705 clients send it) is fine."""
    credential = await issue(broker)
    fields = {
        "/v1/token": exchange_fields(broker.user_token()),
        "/v1/introspect": {"token": credential["token"]},
        "/v1/revoke": {"credential_id": credential["credential_id"]},
    }[path]
    response = await form(broker.agent("claims"), path, {**fields, "client_id": CLAIMS})
    assert response.status == 200, response.body
    leaks.remember_response(response.body)
    leaks.remember(response.body.get("access_token"))


# -- 4: RFC 7009 errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("agent", "fields", "status", "error"),
    [
        ("claims", {}, 400, "invalid_request"),
        ("claims", {"token": ""}, 400, "invalid_request"),
        ("claims", [("token", "a"), ("token", "b")], 400, "invalid_request"),
        ("claims", {"token": "a", "credential_id": "b"}, 400, "invalid_request"),
        (None, {"token": "a"}, 401, "invalid_client"),
    ],
)
async def test_form_revocation_errors_use_the_oauth_form(
    broker: DevBroker, agent: str | None, fields: Any, status: int, error: str
) -> None:
    """A form-encoded /v1/revoke is RFC 7009: its errors are RFC 6749 section 5.2 JSON."""
    response = await form(broker.agent(agent), "/v1/revoke", fields)
    assert response.status == status, response.body
    assert response.content_type == "application/json"
    assert response.body["error"] == error
    assert response.body["error_description"]
    assert "type" not in response.body


async def test_json_revocation_errors_stay_problem_documents(broker: DevBroker) -> None:
    """The broker's own JSON form of /v1/revoke keeps problem+json errors (contract section 3)."""
    response = await broker.agent("claims").request(
        "POST", "/v1/revoke", json_body={"credential": "x"}
    )
    assert response.status == 400
    assert response.content_type == "application/problem+json"
    unauthenticated = await broker.agent(None).request(
        "POST", "/v1/revoke", json_body={"credential_id": "x"}
    )
    assert unauthenticated.status == 401
    assert unauthenticated.content_type == "application/problem+json"


# -- 5: RFC 8693 may_act and subject_token_type -----------------------------------------------


async def test_may_act_in_a_user_token_must_name_the_actor(broker: DevBroker) -> None:
    """A user token whose may_act names another agent: audited invalid_grant (exchange), 403."""
    only_analytics = broker.idp_token(may_act={"sub": ANALYTICS})
    refused = await form(broker.agent("claims"), "/v1/token", exchange_fields(only_analytics))
    assert refused.status == 400, refused.body
    assert refused.body["error"] == "invalid_grant"
    assert refused.body["reasons"] == ["actor_not_authorized"]
    record = broker.audit_records()[-1]
    assert record["event"] == "credential.denied"
    assert record["reasons"] == ["actor_not_authorized"]
    assert record["agent"]["spiffe_id"] == CLAIMS

    # The same token cannot be used through POST /v1/credentials either.
    denied = await broker.agent("claims").credentials(
        {"tools": ["customer_data_api"], "user_token": only_analytics}
    )
    assert denied.status == 403
    assert denied.body["reasons"] == ["actor_not_authorized"]

    # may_act naming the caller allows it; a malformed may_act is an invalid token.
    allowed = await form(
        broker.agent("claims"),
        "/v1/token",
        exchange_fields(broker.idp_token(may_act={"sub": CLAIMS})),
    )
    assert allowed.status == 200, allowed.body
    leaks.remember(allowed.body["access_token"])
    malformed = await form(
        broker.agent("claims"), "/v1/token", exchange_fields(broker.idp_token(may_act=CLAIMS))
    )
    assert malformed.body["error"] == "invalid_grant"
    assert malformed.body["reasons"] == ["user_token_invalid"]


def _resigned(broker: DevBroker, token: str, **extra: object) -> str:
    """The same broker token (same jti: the same live record) with extra claims.

    Signed by the broker's own current key: what a broker token carrying may_act would be.
    """
    claims = jwt.decode(token, options={"verify_signature": False})
    key = broker.running.app[RUNTIME].issuers["jwt"]._keys.signing_key()
    resigned = sign_compact(
        encoded_header(key.alg, key.kid, "at+jwt"), {**claims, **extra}, key.private_key
    )
    leaks.remember(resigned)
    return resigned


async def test_may_act_in_a_broker_token_must_name_the_actor(delegating: DevBroker) -> None:
    """A broker token whose may_act excludes the sub-agent cannot be narrowed by it."""
    original = await issue(delegating)
    for_someone_else = _resigned(
        delegating, original["token"], may_act={"sub": "spiffe://example.org/agent/other"}
    )
    refused = await form(
        delegating.agent("analytics"), "/v1/token", exchange_fields(for_someone_else, ACCESS)
    )
    assert refused.status == 400, refused.body
    assert refused.body["error"] == "invalid_grant"
    assert refused.body["reasons"] == ["actor_not_authorized"]
    assert delegating.audit_records()[-1]["reasons"] == ["actor_not_authorized"]

    for_analytics = _resigned(delegating, original["token"], may_act={"sub": ANALYTICS})
    allowed = await form(
        delegating.agent("analytics"), "/v1/token", exchange_fields(for_analytics, ACCESS)
    )
    assert allowed.status == 200, allowed.body
    leaks.remember(allowed.body["access_token"])


async def test_subject_token_type_must_say_what_the_subject_is(delegating: DevBroker) -> None:
    """The jwt type is for users' tokens, access_token for this broker's; id_token is refused."""
    user_token = delegating.user_token()
    broker_token = (await issue(delegating))["token"]
    claims, analytics = delegating.agent("claims"), delegating.agent("analytics")
    for agent, subject, declared in (
        (claims, user_token, ACCESS),
        (claims, user_token, ID_TOKEN),
        (analytics, broker_token, JWT_TYPE),
        (analytics, broker_token, ID_TOKEN),
    ):
        response = await form(agent, "/v1/token", exchange_fields(subject, declared))
        assert response.status == 400, (declared, response.body)
        assert response.body["error"] == "invalid_request", response.body
        assert "subject_token_type" in response.body["error_description"]
    for agent, subject, declared in (
        (claims, user_token, JWT_TYPE),
        (analytics, broker_token, ACCESS),
    ):
        response = await form(agent, "/v1/token", exchange_fields(subject, declared))
        assert response.status == 200, (declared, response.body)
        leaks.remember(response.body["access_token"])


# -- 7: no revocation oracle -------------------------------------------------------------------


def _shape(response: Response) -> tuple[int, str, object]:
    return response.status, response.content_type, response.body


async def test_revocation_answers_alike_for_unknown_and_not_yours(broker: DevBroker) -> None:
    """Another's live credential and a never-issued id get one answer; the refusal is audited."""
    theirs = await issue(broker)
    mine = await issue(broker, "analytics")
    analytics = broker.agent("analytics")
    never = "x" * len(theirs["credential_id"])
    forged = jwt.encode({"jti": never, "exp": int(time.time()) + 60}, "k" * 32, algorithm="HS256")

    async def by_json(credential_id: str) -> Response:
        return await analytics.request(
            "POST", "/v1/revoke", json_body={"credential_id": credential_id}
        )

    async def by_form(credential_id: str) -> Response:
        return await form(analytics, "/v1/revoke", {"credential_id": credential_id})

    async def by_token(token: str) -> Response:
        return await form(analytics, "/v1/revoke", {"token": token})

    before = len(broker.audit_records())
    for attempt, live, unknown in (
        (by_json, theirs["credential_id"], never),
        (by_form, theirs["credential_id"], never),
        (by_token, theirs["token"], forged),
    ):
        a, b = await attempt(live), await attempt(unknown)
        assert _shape(a) == _shape(b), (attempt.__name__, a, b)
        assert a.status == 200
        assert a.body == {"revoked": False}

    refused = [
        r for r in broker.audit_records()[before:] if r["event"] == "credential.revoke_refused"
    ]
    reasons = sorted(r["reasons"][0] for r in refused)
    assert reasons == [
        "not_owner",
        "not_owner",
        "not_owner",
        "unknown_credential",
        "unknown_credential",
    ]
    for record in refused:
        assert record["agent"]["spiffe_id"] == ANALYTICS
        assert record["decision"] == "deny"
        assert never not in json.dumps(record)  # a caller's guess is not written down
    assert all(r["event"] != "credential.revoked" for r in broker.audit_records()[before:])
    still = await form(broker.agent("claims"), "/v1/introspect", {"token": theirs["token"]})
    assert still.body["active"] is True

    # The owner (and an admin) still revoke as before.
    own = await by_json(mine["credential_id"])
    assert own.body == {"credential_id": mine["credential_id"], "revoked": True}
    admin = await broker.agent("admin").request(
        "POST", "/v1/revoke", json_body={"credential_id": theirs["credential_id"]}
    )
    assert admin.body == {"credential_id": theirs["credential_id"], "revoked": True}
