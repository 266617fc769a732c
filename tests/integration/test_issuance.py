"""POST /v1/credentials end to end on the development trust domain: the seeds' story."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import jwt
import pytest
from cryptography import x509

from tests.support.devbroker import DevBroker, dev_broker


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[DevBroker]:
    """The development trust domain, served in-process over real TLS."""
    async with dev_broker(tmp_path / "dev") as running:
        yield running


def _x5t(cert_path: Path) -> str:
    der = x509.load_pem_x509_certificate(cert_path.read_bytes()).public_bytes(
        __import__("cryptography").hazmat.primitives.serialization.Encoding.DER
    )
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


async def test_claims_agent_gets_a_token_that_verifies_with_the_published_jwks(
    broker: DevBroker,
) -> None:
    """The claims agent, for alice, gets a customer_data_api JWT verifiable with pyjwt alone."""
    claims_agent = broker.agent("claims")
    response = await claims_agent.credentials(
        {
            "tools": ["customer_data_api"],
            "user_token": broker.user_token("alice"),
            "ttl_seconds": 120,
        }
    )
    assert response.status == 201, response.body
    assert response.body["expires_in"] == 120
    [credential] = response.body["credentials"]
    assert credential["tool"] == "customer_data_api"
    assert credential["type"] == "jwt"

    # A resource server: fetch the JWKS over HTTPS (no client certificate needed) and verify.
    jwks = (await broker.agent(None).request("GET", "/.well-known/jwks.json")).body
    token = credential["token"]
    header = jwt.get_unverified_header(token)
    assert header["typ"] == "at+jwt"
    assert header["alg"] == "ES256"  # the default: RFC 9068 validators refuse EdDSA by default
    key = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    assert "d" not in key  # public parts only
    claims = jwt.decode(
        token,
        jwt.PyJWK(key).key,
        algorithms=["ES256"],
        audience="https://customer-data.example.org",
        issuer=broker.settings.default_issuer,
    )
    assert claims["sub"] == "alice"
    assert claims["act"] == {"sub": "spiffe://example.org/agent/claims"}
    assert claims["client_id"] == "spiffe://example.org/agent/claims"
    assert claims["tool"] == "customer_data_api"
    assert claims["scope"] == "customers:read"
    assert claims["jti"] == credential["credential_id"]
    assert claims["exp"] - claims["iat"] == 120
    assert claims["nbf"] == claims["iat"]
    assert abs(claims["iat"] - time.time()) < 30
    assert claims["cnf"] == {"x5t#S256": _x5t(broker.td.agent_dir("claims") / "svid.pem")}


async def test_analytics_agent_is_denied_customer_data(broker: DevBroker) -> None:
    """The analytics agent may not get customer_data_api: 403 with decision id and reasons."""
    response = await broker.agent("analytics").credentials({"tools": ["customer_data_api"]})
    assert response.status == 403
    assert response.content_type == "application/problem+json"
    assert response.body["reasons"] == ["tool_not_allowed"]
    assert response.body["decision_id"]
    [record] = [
        r for r in broker.audit_records() if r["decision_id"] == response.body["decision_id"]
    ]
    assert record["event"] == "credential.denied"
    assert record["decision"] == "deny"
    assert record["reasons"] == ["tool_not_allowed"]
    assert record["credentials"] == []


async def test_analytics_agent_gets_its_tool_without_a_user(broker: DevBroker) -> None:
    """The analytics agent gets analytics_api with no user token; sub is the agent."""
    response = await broker.agent("analytics").credentials({"tools": ["analytics_api"]})
    assert response.status == 201, response.body
    token = response.body["credentials"][0]["token"]
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["sub"] == "spiffe://example.org/agent/analytics"
    assert claims["act"] == {"sub": "spiffe://example.org/agent/analytics"}


async def test_ttl_of_a_day_is_refused(broker: DevBroker) -> None:
    """ttl_seconds 86400 exceeds the policy's maximum: 403 ttl_exceeds_max."""
    response = await broker.agent("claims").credentials(
        {"tools": ["customer_data_api"], "user_token": broker.user_token(), "ttl_seconds": 86400}
    )
    assert response.status == 403
    assert response.body["reasons"] == ["ttl_exceeds_max"]


async def test_expired_user_token_is_refused(broker: DevBroker) -> None:
    """A user token that expired a minute ago: 403 user_token_expired, audited."""
    stale = broker.user_token(ttl=-60)
    response = await broker.agent("claims").credentials(
        {"tools": ["customer_data_api"], "user_token": stale}
    )
    assert response.status == 403
    assert response.body["reasons"] == ["user_token_expired"]
    record = broker.audit_records()[-1]
    assert record["event"] == "credential.denied"
    assert record["reasons"] == ["user_token_expired"]
    assert stale not in json.dumps(broker.audit_records())


async def test_user_token_is_required_for_claims(broker: DevBroker) -> None:
    """The claims rule requires a user: no token, 403 user_required."""
    response = await broker.agent("claims").credentials({"tools": ["ticketing_api"]})
    assert response.status == 403
    assert response.body["reasons"] == ["user_required"]


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        ({"aud": "someone-else"}, "user_token_wrong_audience"),
        ({"iss": "https://evil.example.org"}, "user_token_issuer_untrusted"),
    ],
)
async def test_user_token_claims_are_checked(
    broker: DevBroker, mutate: dict[str, str], reason: str
) -> None:
    """Audience and issuer of the user token are checked exactly."""
    token = broker.idp_token(**mutate)
    response = await broker.agent("claims").credentials(
        {"tools": ["customer_data_api"], "user_token": token}
    )
    assert response.status == 403
    assert response.body["reasons"] == [reason]


async def test_forged_user_token_is_refused(broker: DevBroker) -> None:
    """A user token signed by another key is not valid (403 user_token_invalid)."""
    from broker.dev.pki import new_ed25519_key

    kid = json.loads((broker.td.root / "idp" / "jwks.json").read_text())["keys"][0]["kid"]
    now = int(time.time())
    token = jwt.encode(
        {
            "iss": "https://idp.example.org",
            "aud": "credential-broker",
            "sub": "mallory",
            "exp": now + 300,
        },
        new_ed25519_key(),
        algorithm="EdDSA",
        headers={"kid": kid},
    )
    response = await broker.agent("claims").credentials(
        {"tools": ["customer_data_api"], "user_token": token}
    )
    assert response.status == 403
    assert response.body["reasons"] == ["user_token_invalid"]


async def test_multi_tool_request_with_one_denied_tool_issues_nothing(broker: DevBroker) -> None:
    """An allowed tool with a denied one: 403, no credential at all, nothing stored."""
    response = await broker.agent("claims").credentials(
        {"tools": ["customer_data_api", "analytics_api"], "user_token": broker.user_token()}
    )
    assert response.status == 403
    assert response.body["reasons"] == ["tool_not_allowed"]
    assert "credentials" not in response.body
    record = broker.audit_records()[-1]
    assert record["decision"] == "deny"
    assert record["credentials"] == []
    assert (
        await broker.running.runtime.state.agent_credentials("spiffe://example.org/agent/claims")
        == []
    )


async def test_user_token_act_claim_extends_the_delegation_chain(broker: DevBroker) -> None:
    """A user token already delegated to an orchestrator nests it inside the new `act`."""
    token = broker.idp_token(act={"sub": "spiffe://example.org/agent/orchestrator"})
    response = await broker.agent("claims").credentials(
        {"tools": ["customer_data_api"], "user_token": token}
    )
    assert response.status == 201, response.body
    claims = jwt.decode(
        response.body["credentials"][0]["token"], options={"verify_signature": False}
    )
    assert claims["act"] == {
        "sub": "spiffe://example.org/agent/claims",
        "act": {"sub": "spiffe://example.org/agent/orchestrator"},
    }
    record = broker.audit_records()[-1]
    assert record["delegation_chain"] == [
        "alice",
        "spiffe://example.org/agent/orchestrator",
        "spiffe://example.org/agent/claims",
    ]


async def test_issued_record_attributes_everything(broker: DevBroker) -> None:
    """The audit record of an issuance names agent, user, chain, policy version and credentials."""
    response = await broker.agent("claims").credentials(
        {
            "tools": ["customer_data_api", "ticketing_api"],
            "user_token": broker.user_token("bob"),
            "session_id": "case-4711",
            "reason": "answer a claim question",
        }
    )
    assert response.status == 201
    record = broker.audit_records()[-1]
    assert record["event"] == "credential.issued"
    assert record["decision_id"] == response.body["decision_id"]
    assert record["agent"]["spiffe_id"] == "spiffe://example.org/agent/claims"
    assert len(record["agent"]["x509_sha256"]) == 64
    assert record["user"] == {"iss": "https://idp.example.org", "sub": "bob"}
    assert record["delegation_chain"] == ["bob", "spiffe://example.org/agent/claims"]
    assert record["policy"]["id"] == "dev"
    assert record["policy"]["version"] == broker.running.runtime.policy.policy.version
    assert record["rules"] == ["claims-on-behalf-of-user"]
    assert record["ttl_granted"] == 300
    assert record["session_id"] == "case-4711"
    ids = {c["credential_id"] for c in response.body["credentials"]}
    assert {c["credential_id"] for c in record["credentials"]} == ids
    for credential in response.body["credentials"]:
        assert credential["token"] not in json.dumps(record)


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"tools": ["customer_data_api"], "tools": []}', "duplicate member"),
        ('{"tools": ["customer_data_api"], "ttl_seconds": NaN}', "NaN is not valid JSON"),
        (json.dumps({"tools": ["customer_data_api"], "extra": 1}), "unknown field 'extra'"),
        (json.dumps({}), "'tools' is required"),
        (json.dumps({"tools": "customer_data_api"}), "must be a list"),
        (json.dumps({"tools": []}), "1 to 16 tools"),
        (json.dumps({"tools": ["customer_data_api"] * 17}), "1 to 16 tools"),
        (json.dumps({"tools": ["nope_api"]}), "unknown tool 'nope_api'"),
        (json.dumps({"tools": ["Bad Name"]}), "tool names"),
        (json.dumps({"tools": ["customer_data_api", "customer_data_api"]}), "twice"),
        (json.dumps({"tools": ["customer_data_api"], "ttl_seconds": "300"}), "must be an integer"),
        (json.dumps({"tools": ["customer_data_api"], "ttl_seconds": 1.5}), "must be an integer"),
        (json.dumps({"tools": ["customer_data_api"], "ttl_seconds": True}), "must be an integer"),
        (json.dumps({"tools": ["customer_data_api"], "ttl_seconds": 0}), "at least 1"),
        (json.dumps({"tools": ["customer_data_api"], "ttl_seconds": -5}), "at least 1"),
        (json.dumps({"tools": ["customer_data_api"], "user_token": 7}), "must be a string"),
        (json.dumps({"tools": ["customer_data_api"], "session_id": "x" * 129}), "at most 128"),
        (json.dumps({"tools": ["customer_data_api"], "reason": "x" * 513}), "at most 512"),
    ],
)
async def test_bad_requests_are_400_with_precise_detail(
    broker: DevBroker, body: str, detail: str
) -> None:
    """Malformed bodies get 400 problem+json naming the problem; nothing is audited or issued."""
    before = len(broker.audit_records()) if (broker.td.root / "audit.log").exists() else 0
    response = await broker.agent("claims").request(
        "POST", "/v1/credentials", data=body, headers={"Content-Type": "application/json"}
    )
    assert response.status == 400, response.body
    assert response.content_type == "application/problem+json"
    assert detail in response.body["detail"]
    after = len(broker.audit_records()) if (broker.td.root / "audit.log").exists() else 0
    assert after == before


async def test_body_over_64_kib_is_413(broker: DevBroker) -> None:
    """A body over 64 KiB is refused with 413 problem+json."""
    body = json.dumps({"tools": ["customer_data_api"], "reason": "x" * 70000})
    response = await broker.agent("claims").request(
        "POST", "/v1/credentials", data=body, headers={"Content-Type": "application/json"}
    )
    assert response.status == 413
    assert response.content_type == "application/problem+json"


async def test_form_content_type_still_parses_json(broker: DevBroker) -> None:
    """Curl -d declares a form; the JSON body is read all the same."""
    response = await broker.agent("analytics").request(
        "POST",
        "/v1/credentials",
        data=json.dumps({"tools": ["analytics_api"]}),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status == 201


async def test_rate_limit_of_60_per_user_per_minute(broker: DevBroker) -> None:
    """The 61st credential for one user within a minute is 429 with Retry-After, audited."""
    agent = broker.agent("claims")
    token = broker.user_token("carol")
    for _ in range(60):
        response = await agent.credentials({"tools": ["customer_data_api"], "user_token": token})
        assert response.status == 201, response.body
    refused = await agent.credentials({"tools": ["customer_data_api"], "user_token": token})
    assert refused.status == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.body["reasons"] == ["rate_limited"]
    assert refused.body["decision_id"]
    record = broker.audit_records()[-1]
    assert record["event"] == "credential.denied"
    assert record["reasons"] == ["rate_limited"]
    # Another user is not affected.
    other = await agent.credentials(
        {"tools": ["customer_data_api"], "user_token": broker.user_token("dave")}
    )
    assert other.status == 201


async def test_discovery_documents(broker: DevBroker) -> None:
    """openid-configuration names the issuer and the OAuth endpoints; both answer without auth."""
    anonymous = broker.agent(None)
    config = (await anonymous.request("GET", "/.well-known/openid-configuration")).body
    issuer = broker.settings.default_issuer
    assert config["issuer"] == issuer
    assert config["jwks_uri"] == f"{issuer}/.well-known/jwks.json"
    assert config["token_endpoint"] == f"{issuer}/v1/token"
    assert config["introspection_endpoint"] == f"{issuer}/v1/introspect"
    assert config["revocation_endpoint"] == f"{issuer}/v1/revoke"
    jwks = (await anonymous.request("GET", "/.well-known/jwks.json")).body
    assert [k["alg"] for k in jwks["keys"]] == ["ES256"]


async def test_metrics_count_decisions_and_credentials(broker: DevBroker) -> None:
    """/metrics (no authentication) counts issued credentials, denials by reason, requests."""
    await broker.agent("analytics").credentials({"tools": ["analytics_api"]})
    await broker.agent("analytics").credentials({"tools": ["customer_data_api"]})
    response = await broker.agent(None).request("GET", "/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = response.body
    assert 'broker_credentials_issued_total{tool="analytics_api",type="jwt"} 1.0' in text
    assert 'broker_decisions_total{decision="deny",reason="tool_not_allowed"} 1.0' in text
    assert (
        'broker_http_requests_total{method="POST",route="/v1/credentials",status="201"} 1.0' in text
    )
    assert 'broker_ready{check="audit"} 1.0' in text
    assert 'broker_policy_info{id="dev"' in text
    assert "broker_svid_expiry_timestamp_seconds" in text
