"""Credential lifecycle: introspection, revocation, agent revocation, token exchange, replay."""

from __future__ import annotations

import dataclasses
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml

from broker.clock import SystemClock
from broker.dev.trust_domain import init_trust_domain, mint_jwt_svid
from tests.support import leaks
from tests.support.clock import ManualClock
from tests.support.devbroker import Agent, DevBroker, Response, dev_broker

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ACCESS = "urn:ietf:params:oauth:token-type:access_token"


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[DevBroker]:
    """The development trust domain, served in-process."""
    async with dev_broker(tmp_path / "dev") as running:
        yield running


async def issue(
    broker: DevBroker, agent: str = "claims", user: str = "alice", tool: str = "customer_data_api"
) -> dict[str, Any]:
    body: dict[str, Any] = {"tools": [tool]}
    if agent == "claims":
        body["user_token"] = broker.user_token(user)
    response = await broker.agent(agent).credentials(body)
    assert response.status == 201, response.body
    return response.body["credentials"][0]  # type: ignore[no-any-return]


async def form(agent: Agent, path: str, fields: dict[str, str] | list[tuple[str, str]]) -> Response:
    return await agent.request(
        "POST",
        path,
        data=urllib.parse.urlencode(fields),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )


# -- introspection ---------------------------------------------------------------------------


async def test_introspection_by_owner_and_admin(broker: DevBroker) -> None:
    """The owner and an admin see the claims of an active token."""
    credential = await issue(broker)
    for who in ("claims", "admin"):
        response = await form(broker.agent(who), "/v1/introspect", {"token": credential["token"]})
        assert response.status == 200
        body = response.body
        assert body["active"] is True
        assert body["jti"] == credential["credential_id"]
        assert body["sub"] == "alice"
        assert body["client_id"] == "spiffe://example.org/agent/claims"
        assert body["scope"] == "customers:read"
        assert body["aud"] == "https://customer-data.example.org"


async def test_introspection_never_reveals_to_others_or_garbage(broker: DevBroker) -> None:
    """Another agent, a garbage token, a forged one: {"active": false} and nothing else."""
    credential = await issue(broker)
    forged = jwt.encode(
        {
            "iss": broker.settings.default_issuer,
            "jti": credential["credential_id"],
            "exp": 4102444800,
        },
        "k" * 32,
        algorithm="HS256",
    )
    for who, token in (
        ("analytics", credential["token"]),
        ("claims", "garbage"),
        ("claims", forged),
    ):
        response = await form(broker.agent(who), "/v1/introspect", {"token": token})
        assert response.status == 200
        assert response.body == {"active": False}


async def test_introspection_of_expired_token_is_inactive(tmp_path: Path) -> None:
    """Once past exp, a token introspects inactive."""
    clock = ManualClock()
    async with dev_broker(tmp_path / "dev", clock=clock) as broker:
        credential = await issue(broker, "analytics", tool="analytics_api")
        clock.advance(301)
        response = await form(
            broker.agent("analytics"), "/v1/introspect", {"token": credential["token"]}
        )
        assert response.body == {"active": False}


@pytest.mark.parametrize(
    ("fields", "content_type", "error"),
    [
        ({}, "application/x-www-form-urlencoded", "invalid_request"),
        ([("token", "a"), ("token", "b")], "application/x-www-form-urlencoded", "invalid_request"),
        ({"token": "a"}, "application/json", "invalid_request"),
    ],
)
async def test_introspection_errors_use_the_oauth_form(
    broker: DevBroker, fields: Any, content_type: str, error: str
) -> None:
    """A missing or repeated token, or a JSON body: 400 {"error": "invalid_request", ...}."""
    data = (
        json.dumps(fields) if content_type == "application/json" else urllib.parse.urlencode(fields)
    )
    response = await broker.agent("claims").request(
        "POST", "/v1/introspect", data=data, headers={"Content-Type": content_type}
    )
    assert response.status == 400
    assert response.content_type == "application/json"
    assert response.body["error"] == error
    assert response.body["error_description"]


async def test_oauth_endpoints_refuse_unauthenticated_callers_in_oauth_form(
    broker: DevBroker,
) -> None:
    """No SVID at /v1/token: 401 invalid_client in the OAuth form."""
    response = await form(broker.agent(None), "/v1/token", {"grant_type": EXCHANGE})
    assert response.status == 401
    assert response.body["error"] == "invalid_client"


# -- revocation ------------------------------------------------------------------------------


async def test_owner_revokes_a_credential(broker: DevBroker) -> None:
    """The owner revokes by credential_id: 200, audited, introspects inactive."""
    credential = await issue(broker)
    response = await broker.agent("claims").request(
        "POST", "/v1/revoke", json_body={"credential_id": credential["credential_id"]}
    )
    assert response.status == 200
    assert response.body == {"credential_id": credential["credential_id"], "revoked": True}
    record = broker.audit_records()[-1]
    assert record["event"] == "credential.revoked"
    assert record["credentials"][0]["credential_id"] == credential["credential_id"]
    assert record["target"] == {"owner": "spiffe://example.org/agent/claims"}
    introspected = await form(
        broker.agent("admin"), "/v1/introspect", {"token": credential["token"]}
    )
    assert introspected.body == {"active": False}


async def test_revocation_is_for_owner_or_admin(broker: DevBroker) -> None:
    """Another agent revokes nothing (told as for an unknown id); an admin may revoke."""
    credential = await issue(broker)
    body = {"credential_id": credential["credential_id"]}
    refused = await broker.agent("analytics").request("POST", "/v1/revoke", json_body=body)
    assert (refused.status, refused.body) == (200, {"revoked": False})
    admin = await broker.agent("admin").request("POST", "/v1/revoke", json_body=body)
    assert admin.body == {"credential_id": credential["credential_id"], "revoked": True}
    missing = await broker.agent("admin").request(
        "POST", "/v1/revoke", json_body={"credential_id": "nope"}
    )
    assert (missing.status, missing.body) == (200, {"revoked": False})
    bad = await broker.agent("admin").request("POST", "/v1/revoke", json_body={"credential": "x"})
    assert bad.status == 400


async def test_rfc7009_token_revocation(broker: DevBroker) -> None:
    """A form `token=` revokes that token; an invalid token is not an error (RFC 7009)."""
    credential = await issue(broker)
    response = await form(broker.agent("claims"), "/v1/revoke", {"token": credential["token"]})
    assert response.body == {"credential_id": credential["credential_id"], "revoked": True}
    unknown = await form(broker.agent("claims"), "/v1/revoke", {"token": "not-a-token"})
    assert unknown.status == 200
    assert unknown.body == {"revoked": False}


async def test_admin_revokes_an_agent(broker: DevBroker) -> None:
    """The agent's next request is 401 (audited) and its live credentials introspect inactive."""
    first, second = await issue(broker), await issue(broker, user="bob")
    other = await issue(broker, "analytics", tool="analytics_api")
    response = await broker.agent("admin").request(
        "POST",
        "/v1/admin/agents/revoke",
        json_body={"spiffe_id": "spiffe://example.org/agent/claims"},
    )
    assert response.status == 200
    assert response.body["spiffe_id"] == "spiffe://example.org/agent/claims"
    assert response.body["credentials_revoked"] == 2
    record = broker.audit_records()[-1]
    assert record["event"] == "agent.revoked"
    assert {c["credential_id"] for c in record["credentials"]} == {
        first["credential_id"],
        second["credential_id"],
    }

    refused = await broker.agent("claims").credentials(
        {"tools": ["ticketing_api"], "user_token": broker.user_token()}
    )
    assert refused.status == 401
    assert "has been revoked" in refused.body["detail"]
    assert broker.audit_records()[-1]["event"] == "auth.failed"
    for token in (first["token"], second["token"]):
        assert (await form(broker.agent("admin"), "/v1/introspect", {"token": token})).body == {
            "active": False
        }
    # Other agents are untouched.
    assert (
        await form(broker.agent("analytics"), "/v1/introspect", {"token": other["token"]})
    ).body["active"]


async def test_agent_revocation_is_for_admins_only(broker: DevBroker) -> None:
    """A non-admin gets 403; an admin cannot revoke itself; a malformed id is 400."""
    body = {"spiffe_id": "spiffe://example.org/agent/analytics"}
    assert (
        await broker.agent("claims").request("POST", "/v1/admin/agents/revoke", json_body=body)
    ).status == 403
    own = {"spiffe_id": "spiffe://example.org/admin"}
    assert (
        await broker.agent("admin").request("POST", "/v1/admin/agents/revoke", json_body=own)
    ).status == 400
    bad = {"spiffe_id": "not an id"}
    assert (
        await broker.agent("admin").request("POST", "/v1/admin/agents/revoke", json_body=bad)
    ).status == 400


# -- token exchange ---------------------------------------------------------------------------


def urllib_exchange(
    broker: DevBroker, agent: str, fields: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    """A plain OAuth client: urllib, a form post, the agent's certificate."""
    ctx = ssl.create_default_context(cafile=str(broker.td.ca_bundle))
    directory = broker.td.agent_dir(agent)
    ctx.load_cert_chain(directory / "svid.pem", directory / "key.pem")
    request = urllib.request.Request(  # noqa: S310
        f"{broker.url}/v1/token",
        data=urllib.parse.urlencode(fields).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, context=ctx, timeout=10) as resp:  # noqa: S310
            body = json.loads(resp.read())
            leaks.remember_response(body)
            return resp.status, body
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def test_token_exchange_from_a_plain_oauth_client(broker: DevBroker) -> None:
    """A plain urllib form post: user token in, an RFC 9068 access token out."""
    import asyncio

    user_token = broker.user_token("alice")
    status, body = await asyncio.to_thread(
        urllib_exchange,
        broker,
        "claims",
        {
            "grant_type": EXCHANGE,
            "subject_token": user_token,
            "subject_token_type": JWT_TYPE,
            "resource": "https://customer-data.example.org",
        },
    )
    assert status == 200, body
    assert body["issued_token_type"] == ACCESS
    assert body["token_type"] == "Bearer"
    assert 0 < body["expires_in"] <= 300
    assert body["scope"] == "customers:read"
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["sub"] == "alice"
    assert claims["aud"] == "https://customer-data.example.org"
    assert claims["act"] == {"sub": "spiffe://example.org/agent/claims"}
    assert broker.audit_records()[-1]["event"] == "credential.issued"


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"grant_type": "client_credentials"}, "unsupported_grant_type"),
        (
            {
                "grant_type": EXCHANGE,
                "subject_token_type": JWT_TYPE,
                "audience": "customer_data_api",
            },
            "invalid_request",
        ),
        (
            {
                "subject_token": "$USER",
                "subject_token_type": JWT_TYPE,
                "audience": "customer_data_api",
            },
            "invalid_request",
        ),
        (
            {
                "grant_type": EXCHANGE,
                "subject_token": "$USER",
                "subject_token_type": "urn:x",
                "audience": "customer_data_api",
            },
            "invalid_request",
        ),
        (
            {"grant_type": EXCHANGE, "subject_token": "$USER", "subject_token_type": JWT_TYPE},
            "invalid_request",
        ),
        (
            {
                "grant_type": EXCHANGE,
                "subject_token": "$USER",
                "subject_token_type": JWT_TYPE,
                "resource": "https://nowhere",
            },
            "invalid_target",
        ),
        (
            {
                "grant_type": EXCHANGE,
                "subject_token": "$USER",
                "subject_token_type": JWT_TYPE,
                "audience": "analytics_api",
            },
            "invalid_target",
        ),
        (
            {
                "grant_type": EXCHANGE,
                "subject_token": "$EXPIRED",
                "subject_token_type": JWT_TYPE,
                "audience": "customer_data_api",
            },
            "invalid_grant",
        ),
        (
            {
                "grant_type": EXCHANGE,
                "subject_token": "$USER",
                "subject_token_type": JWT_TYPE,
                "audience": "customer_data_api",
                "scope": "customers:write",
            },
            "invalid_scope",
        ),
        (
            {
                "grant_type": EXCHANGE,
                "subject_token": "$USER",
                "subject_token_type": JWT_TYPE,
                "audience": "customer_data_api",
                "actor_token": "$OTHER_SVID",
                "actor_token_type": JWT_TYPE,
            },
            "invalid_request",
        ),
    ],
)
async def test_token_exchange_errors(broker: DevBroker, fields: dict[str, str], error: str) -> None:
    """Each malformed or refused exchange gets its RFC 6749/8693 error code."""
    substitutions = {
        "$USER": broker.user_token("alice"),
        "$EXPIRED": broker.user_token("alice", ttl=-120),
        "$OTHER_SVID": mint_jwt_svid(
            broker.td, agent="analytics", audience=broker.td.broker_id, ttl=60, clock=SystemClock()
        ),
    }
    filled = {k: substitutions.get(v, v) for k, v in fields.items()}
    response = await form(broker.agent("claims"), "/v1/token", filled)
    assert response.status == 400, response.body
    assert response.content_type == "application/json"
    assert response.body["error"] == error, response.body


async def test_actor_token_matching_the_caller_is_accepted(broker: DevBroker) -> None:
    """An actor_token naming the authenticated agent is fine."""
    svid = mint_jwt_svid(
        broker.td, agent="claims", audience=broker.td.broker_id, ttl=60, clock=SystemClock()
    )
    leaks.remember(svid)
    response = await form(
        broker.agent("claims"),
        "/v1/token",
        {
            "grant_type": EXCHANGE,
            "subject_token": broker.user_token(),
            "subject_token_type": JWT_TYPE,
            "audience": "customer_data_api",
            "actor_token": svid,
            "actor_token_type": JWT_TYPE,
        },
    )
    assert response.status == 200, response.body


@pytest.fixture
async def delegating(tmp_path: Path) -> AsyncIterator[DevBroker]:
    """A policy where analytics may act for a user as a sub-agent of claims (depth 1)."""
    root = tmp_path / "dev"
    td, _ = init_trust_domain(root, None, SystemClock())
    policy = yaml.safe_load(td.policy.read_text())
    policy["rules"].append(
        {
            "id": "analytics-as-sub-agent",
            "agents": ["spiffe://example.org/agent/analytics"],
            "tools": ["customer_data_api"],
            "user": {"required": True},
            "max_delegation_depth": 1,
        }
    )
    td.policy.write_text(yaml.safe_dump(policy))
    async with dev_broker(root) as running:
        yield running


async def test_sub_agent_narrows_a_broker_token_and_the_act_chain_grows(
    delegating: DevBroker,
) -> None:
    """A claims credential exchanged by analytics: same user, nested act, no longer life."""
    original = await issue(delegating)
    response = await form(
        delegating.agent("analytics"),
        "/v1/token",
        {
            "grant_type": EXCHANGE,
            "subject_token": original["token"],
            "subject_token_type": ACCESS,
            "audience": "customer_data_api",
            "scope": "customers:read",
        },
    )
    assert response.status == 200, response.body
    first = jwt.decode(original["token"], options={"verify_signature": False})
    narrowed = jwt.decode(response.body["access_token"], options={"verify_signature": False})
    assert narrowed["sub"] == "alice"
    assert narrowed["act"] == {
        "sub": "spiffe://example.org/agent/analytics",
        "act": {"sub": "spiffe://example.org/agent/claims"},
    }
    assert narrowed["exp"] <= first["exp"]
    assert delegating.audit_records()[-1]["delegation_chain"] == [
        "alice",
        "spiffe://example.org/agent/claims",
        "spiffe://example.org/agent/analytics",
    ]

    # Depth is bounded: exchanging the exchanged token again would make the chain too deep.
    deeper = await form(
        delegating.agent("analytics"),
        "/v1/token",
        {
            "grant_type": EXCHANGE,
            "subject_token": response.body["access_token"],
            "subject_token_type": ACCESS,
            "audience": "customer_data_api",
        },
    )
    assert deeper.status == 400
    assert deeper.body["error"] == "invalid_grant"
    assert deeper.body["reasons"] == ["delegation_too_deep"]


async def test_delegated_exchange_refuses_widening_other_tools_and_revoked_tokens(
    delegating: DevBroker,
) -> None:
    """No wider scope, no other tool, nothing from a revoked token."""
    original = await issue(delegating)
    base = {
        "grant_type": EXCHANGE,
        "subject_token": original["token"],
        "subject_token_type": ACCESS,
    }
    wider = await form(
        delegating.agent("analytics"),
        "/v1/token",
        {**base, "audience": "customer_data_api", "scope": "customers:read customers:write"},
    )
    assert wider.body["error"] == "invalid_scope"
    other_tool = await form(
        delegating.agent("analytics"), "/v1/token", {**base, "audience": "analytics_api"}
    )
    assert other_tool.body["error"] == "invalid_target"
    await delegating.agent("claims").request(
        "POST", "/v1/revoke", json_body={"credential_id": original["credential_id"]}
    )
    revoked = await form(
        delegating.agent("analytics"), "/v1/token", {**base, "audience": "customer_data_api"}
    )
    assert revoked.body["error"] == "invalid_grant"
    assert revoked.body["reasons"] == ["subject_token_revoked"]


# -- replay protection --------------------------------------------------------------------------


async def test_jwt_svid_replay_protection(tmp_path: Path) -> None:
    """With replay protection on, a JWT-SVID authenticates once."""
    root = tmp_path / "dev"
    td, _ = init_trust_domain(root, None, SystemClock())
    from broker.config.settings import load_settings

    state = dataclasses.replace(load_settings(td.config).state, jwt_svid_replay_protection=True)
    async with dev_broker(root, state=state) as broker:
        svid = mint_jwt_svid(
            broker.td, agent="analytics", audience=broker.td.broker_id, ttl=60, clock=SystemClock()
        )
        leaks.remember(svid)
        anonymous = broker.agent(None)
        headers = {"Authorization": f"Bearer {svid}"}
        first = await anonymous.request("GET", "/v1/whoami", headers=headers)
        assert first.status == 200
        replay = await anonymous.request("GET", "/v1/whoami", headers=headers)
        assert replay.status == 401
        assert "already used" in replay.body["detail"]
