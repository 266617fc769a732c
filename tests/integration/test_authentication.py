"""Agent authentication over real TLS: every X509-SVID and JWT-SVID rule, one crafted SVID each."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from broker.dev.pki import key_usage, new_ec_key
from broker.jose import public_jwk
from tests.support.broker import Identity, InProcessBroker, client_context, in_process_broker
from tests.support.pki import Svid, TrustDomain

PROBLEM = "application/problem+json"


@pytest.fixture
async def broker(identity: Identity) -> AsyncIterator[InProcessBroker]:
    """The broker, serving the `identity` trust domain over real TLS."""
    async with in_process_broker(identity.settings()) as running:
        yield running


async def whoami(
    broker: InProcessBroker,
    identity: Identity,
    client: Svid | None = None,
    *,
    bearer: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, str, dict[str, Any]]:
    """GET /v1/whoami on a fresh connection; returns status, content type and body."""
    ctx = client_context(identity.td.bundle_pem(), client, identity.directory)
    all_headers = dict(headers or {})
    if bearer is not None:
        all_headers["Authorization"] = f"Bearer {bearer}"
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session,
        session.get(f"{broker.url}/v1/whoami", headers=all_headers) as resp,
    ):
        return resp.status, resp.content_type, await resp.json(content_type=None)


async def assert_401(result: tuple[int, str, dict[str, Any]], detail: str) -> None:
    status, content_type, body = result
    assert status == 401, body
    assert content_type == PROBLEM
    assert body["status"] == 401
    assert body["type"].endswith(":unauthenticated")
    assert detail in body["detail"], body["detail"]
    assert "Traceback" not in json.dumps(body)


# -- X.509-SVIDs over mTLS ------------------------------------------------------------------


async def test_valid_x509_svid_authenticates(broker: InProcessBroker, identity: Identity) -> None:
    """A well-formed X.509-SVID from our trust domain is accepted and named exactly."""
    agent = identity.td.svid("/agent/claims")
    status, _, body = await whoami(broker, identity, agent)
    assert status == 200
    assert body["spiffe_id"] == "spiffe://example.org/agent/claims"
    assert body["method"] == "x509_svid"
    digest = agent.cert.fingerprint(__import__("cryptography").hazmat.primitives.hashes.SHA256())
    assert body["x509_sha256"] == digest.hex()


async def test_x509_svid_through_intermediate_authenticates(tmp_path: Path) -> None:
    """A chain leaf -> intermediate -> root (in the bundle) verifies."""
    identity = Identity.create(tmp_path, intermediate=True)
    async with in_process_broker(identity.settings()) as running:
        status, _, body = await whoami(running, identity, identity.td.svid("/agent/deep"))
    assert status == 200
    assert body["spiffe_id"] == "spiffe://example.org/agent/deep"


async def test_no_svid_is_401(broker: InProcessBroker, identity: Identity) -> None:
    """A request with neither a client certificate nor a bearer is refused."""
    await assert_401(await whoami(broker, identity), "no SVID presented")


def _svid(factory: Callable[[TrustDomain], Svid]) -> Callable[[TrustDomain], Svid]:
    return factory


_NOW = datetime.now(UTC)

CRAFTED: dict[str, tuple[Callable[[TrustDomain], Svid], str]] = {
    "no-uri-san": (lambda td: td.svid(uris=[]), "no subjectAltName"),
    "two-uri-sans": (
        lambda td: td.svid(uris=["spiffe://example.org/agent/a", "spiffe://example.org/agent/b"]),
        "2 URI SANs",
    ),
    "uri-san-not-spiffe": (
        lambda td: td.svid(uris=["https://example.org/agent/a"]),
        "not a SPIFFE ID",
    ),
    "root-path": (lambda td: td.svid(uris=["spiffe://example.org"]), "trust domain root"),
    "malformed-spiffe-id": (
        lambda td: td.svid(uris=["spiffe://Example.org/agent/a"]),
        "canonical",
    ),
    "leaf-is-ca": (lambda td: td.svid(is_ca=True), "is a CA certificate"),
    "no-digital-signature": (
        lambda td: td.svid(usage=key_usage(key_encipherment=True)),
        "lacks digitalSignature",
    ),
    "key-cert-sign": (
        lambda td: td.svid(usage=key_usage(digital_signature=True, key_cert_sign=True)),
        "keyCertSign",
    ),
    "crl-sign": (
        lambda td: td.svid(usage=key_usage(digital_signature=True, crl_sign=True)),
        "cRLSign",
    ),
    "key-usage-missing": (lambda td: td.svid(usage=None), "no keyUsage"),
    "key-usage-not-critical": (lambda td: td.svid(usage_critical=False), "marked critical"),
    "eku-without-client-auth": (
        lambda td: td.svid(extended_usage=[ExtendedKeyUsageOID.SERVER_AUTH]),
        "serverAuth and clientAuth",
    ),
    "empty-subject-noncritical-san": (
        lambda td: td.svid(subject=__import__("cryptography").x509.Name([])),
        "must be marked critical",
    ),
    "expired": (
        lambda td: td.svid(
            not_before=_NOW - timedelta(hours=2), not_after=_NOW - timedelta(hours=1)
        ),
        "expired at",
    ),
    "not-yet-valid": (
        lambda td: td.svid(
            not_before=_NOW + timedelta(hours=1), not_after=_NOW + timedelta(hours=2)
        ),
        "not valid yet",
    ),
    "untrusted-ca": (
        lambda td: TrustDomain("example.org").svid("/agent/impostor"),
        "does not verify against the X.509 bundle of trust domain 'example.org'",
    ),
    "foreign-trust-domain": (
        lambda td: TrustDomain("evil.org").svid("/agent/x"),
        "trust domain 'evil.org' of spiffe://evil.org/agent/x is not trusted",
    ),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
async def test_crafted_x509_svid_is_401(
    broker: InProcessBroker, identity: Identity, case: str
) -> None:
    """Each X509-SVID rule, broken by one crafted certificate, yields 401 problem+json."""
    factory, detail = CRAFTED[case]
    await assert_401(await whoami(broker, identity, factory(identity.td)), detail)


async def test_federated_svid_checked_only_against_its_own_bundle(tmp_path: Path) -> None:
    """A federated domain's SVID verifies with its bundle; one signed by our CA for it does not."""
    identity = Identity.create(tmp_path)
    partner = TrustDomain("partner.org")
    (tmp_path / "partner.pem").write_bytes(partner.bundle_pem())
    settings = identity.settings(
        identity={"federation": [{"trust_domain": "partner.org", "bundle": "partner.pem"}]}
    )
    async with in_process_broker(settings) as running:
        status, _, body = await whoami(running, identity, partner.svid("/agent/remote"))
        assert status == 200
        assert body["spiffe_id"] == "spiffe://partner.org/agent/remote"
        # Our CA is trusted for example.org only: it cannot vouch for partner.org.
        forged = identity.td.svid(uris=["spiffe://partner.org/agent/remote"])
        await assert_401(
            await whoami(running, identity, forged),
            "does not verify against the X.509 bundle of trust domain 'partner.org'",
        )
        # And the partner's CA cannot vouch for us.
        forged_ours = partner.svid(uris=["spiffe://example.org/agent/claims"])
        await assert_401(
            await whoami(running, identity, forged_ours),
            "trust domain 'example.org'",
        )


# -- JWT-SVIDs as bearer --------------------------------------------------------------------


async def test_valid_jwt_svid_authenticates(broker: InProcessBroker, identity: Identity) -> None:
    """A JWT-SVID with our audience, signed by the bundle's authority, is accepted."""
    token = identity.td.jwt_svid("/agent/analytics", audience=identity.broker_id)
    status, _, body = await whoami(broker, identity, bearer=token)
    assert status == 200
    assert body["spiffe_id"] == "spiffe://example.org/agent/analytics"
    assert body["method"] == "jwt_svid"


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _unsigned(td: TrustDomain, audience: str) -> str:
    claims = {"sub": "spiffe://example.org/agent/x", "aud": audience, "exp": 4102444800}
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}.c2ln"


def _hmac_with_public_key(td: TrustDomain, audience: str) -> str:
    # The classic confusion attack: HMAC keyed with the public key the verifier holds.
    secret = td.jwt_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    claims = {"sub": "spiffe://example.org/agent/x", "aud": audience, "exp": 4102444800}
    header = _b64({"alg": "HS256", "typ": "JWT", "kid": td.jwt_kid})
    import hashlib
    import hmac

    signing_input = f"{header}.{_b64(claims)}"
    sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(sig).rstrip(b'=').decode()}"


JWT_CASES: dict[str, tuple[Callable[[TrustDomain, str], str], str]] = {
    "alg-none": (_unsigned, "algorithm 'none' is not allowed"),
    "alg-hs256": (_hmac_with_public_key, "algorithm 'HS256' is not allowed"),
    "alg-eddsa": (
        lambda td, aud: jwt.encode(
            {"sub": "spiffe://example.org/agent/x", "aud": aud, "exp": 4102444800},
            __import__("broker.dev.pki", fromlist=["x"]).new_ed25519_key(),
            algorithm="EdDSA",
            headers={"kid": td.jwt_kid},
        ),
        "algorithm 'EdDSA' is not allowed",
    ),
    "wrong-audience": (
        lambda td, aud: td.jwt_svid(audience="spiffe://example.org/other"),
        "'aud' does not contain",
    ),
    "no-audience": (lambda td, aud: td.jwt_svid(audience=aud, drop=["aud"]), "no valid 'aud'"),
    "no-exp": (lambda td, aud: td.jwt_svid(audience=aud, drop=["exp"]), "no 'exp'"),
    "expired-beyond-leeway": (
        lambda td, aud: td.jwt_svid(audience=aud, ttl=-30),
        "expired",
    ),
    "not-yet-valid": (
        lambda td, aud: td.jwt_svid(
            audience=aud, claims={"nbf": int(datetime.now(UTC).timestamp()) + 600}, ttl=900
        ),
        "not valid yet",
    ),
    "bad-signature": (
        lambda td, aud: td.jwt_svid(audience=aud, key=new_ec_key()),
        "signature does not verify",
    ),
    "unknown-kid": (
        lambda td, aud: td.jwt_svid(audience=aud, headers={"kid": "nope"}),
        "no key with kid 'nope' in the JWT bundle of trust domain",
    ),
    "header-jku": (
        lambda td, aud: td.jwt_svid(audience=aud, headers={"jku": "https://evil.example/jwks"}),
        "header 'jku' is not allowed",
    ),
    "header-x5u": (
        lambda td, aud: td.jwt_svid(audience=aud, headers={"x5u": "https://evil.example/c"}),
        "header 'x5u' is not allowed",
    ),
    "header-jwk": (
        lambda td, aud: td.jwt_svid(
            audience=aud, headers={"jwk": public_jwk(td.jwt_key, alg="ES256")}
        ),
        "header 'jwk' is not allowed",
    ),
    "header-x5c": (
        lambda td, aud: td.jwt_svid(audience=aud, headers={"x5c": ["MIIB"]}),
        "header 'x5c' is not allowed",
    ),
    "header-crit": (
        lambda td, aud: td.jwt_svid(audience=aud, headers={"crit": ["exp"]}),
        "header 'crit' is not allowed",
    ),
    "typ-not-jwt": (
        lambda td, aud: td.jwt_svid(audience=aud, headers={"typ": "at+jwt"}),
        "type 'at+jwt' is not accepted",
    ),
    "sub-not-spiffe-id": (
        lambda td, aud: td.jwt_svid(audience=aud, claims={"sub": "alice"}),
        "not a valid SPIFFE ID",
    ),
    "sub-untrusted-domain": (
        lambda td, aud: td.jwt_svid(audience=aud, claims={"sub": "spiffe://evil.org/agent/x"}),
        "trust domain 'evil.org'",
    ),
}


@pytest.mark.parametrize("case", sorted(JWT_CASES))
async def test_crafted_jwt_svid_is_401(
    broker: InProcessBroker, identity: Identity, case: str
) -> None:
    """Each JWT-SVID rule, broken by one crafted token, yields 401 problem+json."""
    factory, detail = JWT_CASES[case]
    token = factory(identity.td, identity.broker_id)
    await assert_401(await whoami(broker, identity, bearer=token), detail)


async def test_jwt_svid_leeway_is_bounded(broker: InProcessBroker, identity: Identity) -> None:
    """A token expired 2 s ago passes the configured 5 s leeway; 30 s ago does not."""
    token = identity.td.jwt_svid(audience=identity.broker_id, ttl=-2)
    status, _, _ = await whoami(broker, identity, bearer=token)
    assert status == 200
    stale = identity.td.jwt_svid(audience=identity.broker_id, ttl=-30)
    await assert_401(await whoami(broker, identity, bearer=stale), "expired")


async def test_jku_header_triggers_no_outbound_fetch(
    broker: InProcessBroker, identity: Identity
) -> None:
    """A token naming a key URL is refused without the broker ever fetching that URL."""
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(json.dumps(identity.td.jwks()).encode())

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/jwks.json"
        attacker = new_ec_key()
        for header in ({"jku": url}, {"x5u": url}):
            token = identity.td.jwt_svid(audience=identity.broker_id, headers=header, key=attacker)
            await assert_401(await whoami(broker, identity, bearer=token), "is not allowed")
    finally:
        server.shutdown()
    assert hits == []


async def test_mtls_and_bearer_naming_different_ids_is_401(
    broker: InProcessBroker, identity: Identity
) -> None:
    """An X.509-SVID for one agent with a JWT-SVID for another is refused."""
    token = identity.td.jwt_svid("/agent/analytics", audience=identity.broker_id)
    await assert_401(
        await whoami(broker, identity, identity.td.svid("/agent/claims"), bearer=token),
        "name different SPIFFE IDs",
    )


async def test_mtls_and_bearer_for_same_id_authenticate(
    broker: InProcessBroker, identity: Identity
) -> None:
    """An X.509-SVID and a JWT-SVID for the same agent are accepted together."""
    token = identity.td.jwt_svid("/agent/claims", audience=identity.broker_id)
    status, _, body = await whoami(
        broker, identity, identity.td.svid("/agent/claims"), bearer=token
    )
    assert status == 200
    assert body["method"] == "x509_svid"
    assert "jwt_svid_jti" in body


async def test_non_bearer_authorization_is_401(broker: InProcessBroker, identity: Identity) -> None:
    """An Authorization header with another scheme is refused, not ignored."""
    status, content_type, body = await whoami(
        broker, identity, headers={"Authorization": "Basic YWxpY2U6cHc="}
    )
    await assert_401((status, content_type, body), "must be 'Bearer <JWT-SVID>'")


# -- Forwarded client certificates ---------------------------------------------------------


def _xfcc(svid: Svid) -> str:
    from urllib.parse import quote

    return f'By=spiffe://example.org/proxy;Hash=abc;Cert="{quote(svid.chain_pem().decode())}"'


async def test_forwarded_cert_ignored_from_untrusted_caller(
    broker: InProcessBroker, identity: Identity
) -> None:
    """X-Forwarded-Client-Cert from a caller that is not a trusted proxy changes nothing."""
    victim = identity.td.svid("/agent/claims")
    status, _, body = await whoami(
        broker,
        identity,
        identity.td.svid("/agent/analytics"),
        headers={"X-Forwarded-Client-Cert": _xfcc(victim)},
    )
    assert status == 200
    assert body["spiffe_id"] == "spiffe://example.org/agent/analytics"
    assert "via_proxy" not in body


async def test_forwarded_cert_believed_from_trusted_proxy(identity: Identity) -> None:
    """A configured trusted proxy's forwarded X.509-SVID is verified and becomes the caller."""
    settings = identity.settings(authentication={"trusted_proxies": ["spiffe://example.org/proxy"]})
    async with in_process_broker(settings) as running:
        proxy = identity.td.svid("/proxy")
        agent = identity.td.svid("/agent/claims")
        status, _, body = await whoami(
            running, identity, proxy, headers={"X-Forwarded-Client-Cert": _xfcc(agent)}
        )
        assert status == 200
        assert body["spiffe_id"] == "spiffe://example.org/agent/claims"
        assert body["via_proxy"] == "spiffe://example.org/proxy"
        # A forwarded certificate is held to the same rules as a direct one.
        bad = TrustDomain("example.org").svid("/agent/claims")
        await assert_401(
            await whoami(running, identity, proxy, headers={"X-Forwarded-Client-Cert": _xfcc(bad)}),
            "does not verify",
        )
