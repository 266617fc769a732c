"""Hostile inputs against a real `broker dev` process over real TLS: documented 4xx, never 500.

JWT-SVIDs and user tokens are signed with the development trust domain's own keys
(`jwt/key.pem`, `idp/key.pem`) from raw JSON text, so that what JOSE encoders refuse to
write (NaN, 1e400, duplicate members) reaches the broker validly signed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from broker.dev.trust_domain import DevTrustDomain
from broker.jose import public_jwk
from tests.support import leaks
from tests.support.broker import BrokerProcess, broker_process, eventually, free_port
from tests.support.devbroker import Agent, Response
from tests.unit.jws_forge import forge

PROBLEM = "application/problem+json"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
HOSTILE_NUMBERS = ["NaN", "Infinity", "-Infinity", "1e400", str(2**64), "-1"]


@dataclass
class Running:
    """The broker process and its development trust domain."""

    process: BrokerProcess
    td: DevTrustDomain
    url: str

    def agent(self, name: str | None) -> Agent:
        return Agent(self.td, self.url, name)

    def audit_records(self) -> list[dict[str, Any]]:
        text = (self.td.root / "audit.log").read_text()
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def jwt_svid(self, header: str | None = None, payload: str | None = None) -> str:
        key = load_pem_private_key((self.td.root / "jwt" / "key.pem").read_bytes(), None)
        kid = public_jwk(key, alg="ES256")["kid"]
        token = forge(
            header or json.dumps({"alg": "ES256", "kid": kid, "typ": "JWT"}),
            payload or self.svid_claims(),
            key,
            alg="ES256",
        )
        leaks.remember(token)
        return token

    def svid_claims(self, **changes: Any) -> str:
        now = int(time.time())
        claims = {
            "sub": self.td.agent_id("analytics"),
            "aud": [self.td.broker_id],
            "iat": now,
            "exp": now + 300,
            "jti": f"j-{time.monotonic_ns()}",
        }
        claims.update(changes)
        return json.dumps({k: v for k, v in claims.items() if v is not None})

    def user_token(self, header: str | None = None, payload: str | None = None) -> str:
        key = load_pem_private_key((self.td.root / "idp" / "key.pem").read_bytes(), None)
        kid = public_jwk(key, alg="EdDSA")["kid"]
        now = int(time.time())
        token = forge(
            header or json.dumps({"alg": "EdDSA", "kid": kid, "typ": "JWT"}),
            payload
            or json.dumps(
                {
                    "iss": self.td.idp_issuer,
                    "aud": "credential-broker",
                    "sub": "alice",
                    "iat": now,
                    "exp": now + 300,
                }
            ),
            key,
            alg="EdDSA",
        )
        leaks.remember(token)
        return token


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """One `broker dev` process for the module (a fresh trust domain, a free port)."""
    workdir = tmp_path_factory.mktemp("hostile")
    port = free_port()
    args = ["dev", "--dir", "d", "--port", str(port), "--gateway-port", str(free_port())]
    with broker_process(args, cwd=workdir) as process:
        url = f"https://127.0.0.1:{port}"
        process.wait_ready(url, workdir / "d" / "ca" / "bundle.pem")
        td = DevTrustDomain((workdir / "d").resolve(), "example.org")
        yield Running(process, td, url)
        assert "Traceback" not in process.stderr, process.stderr[-3000:]
        assert "unhandled error" not in process.stderr, process.stderr[-3000:]


def with_number(claims: str, name: str, literal: str) -> str:
    """The claims text with `name` set to the raw JSON `literal`."""
    body = json.loads(claims)
    body[name] = 0
    return json.dumps(body).replace(f'"{name}": 0', f'"{name}": {literal}')


async def assert_audited_401(running: Running, resp: Response, detail: str) -> None:
    """A 401 problem document whose `auth.failed` record (same request id) is in the log."""
    assert resp.status == 401, resp.body
    assert resp.content_type == PROBLEM
    assert detail in resp.body["detail"], resp.body["detail"]
    request_id = resp.body["request_id"]

    def record() -> dict[str, Any] | None:
        return next((r for r in running.audit_records() if r.get("request_id") == request_id), None)

    found = await eventually(record, within=5)
    assert found["event"] == "auth.failed"
    assert detail in json.dumps(found)


def svid_cases() -> list[tuple[str, str, str]]:
    cases = [
        (f"{name}={literal}", name, literal)
        for name in ("exp", "nbf", "iat")
        for literal in HOSTILE_NUMBERS
    ]
    return [*cases, ("exp=1e300", "exp", "1e300")]


@pytest.mark.parametrize(
    ("case", "name", "literal"), svid_cases(), ids=[c[0] for c in svid_cases()]
)
async def test_jwt_svid_with_hostile_numeric_date_is_audited_401(
    running: Running, case: str, name: str, literal: str
) -> None:
    """NaN, infinities, 1e400, huge and negative exp/nbf/iat: 401 and `auth.failed`, no 500."""
    token = running.jwt_svid(payload=with_number(running.svid_claims(), name, literal))
    resp = await running.agent(None).request(
        "GET", "/v1/whoami", headers={"Authorization": f"Bearer {token}"}
    )
    detail = (
        "non-finite number"
        if literal in {"NaN", "Infinity", "-Infinity", "1e400"}
        else (f"'{name}' must be a NumericDate")
    )
    await assert_audited_401(running, resp, detail)


async def test_jwt_svid_with_duplicate_members_is_audited_401(running: Running) -> None:
    """A second `alg` or `sub` is refused (401, audited), not last-wins."""
    kid = public_jwk(
        load_pem_private_key((running.td.root / "jwt" / "key.pem").read_bytes(), None),
        alg="ES256",
    )["kid"]
    tokens = [
        running.jwt_svid(header=f'{{"alg":"none","kid":"{kid}","typ":"JWT","alg":"ES256"}}'),
        running.jwt_svid(
            payload=running.svid_claims()[:-1] + f', "sub": "{running.td.agent_id("claims")}"}}'
        ),
    ]
    for token in tokens:
        resp = await running.agent(None).request(
            "GET", "/v1/whoami", headers={"Authorization": f"Bearer {token}"}
        )
        await assert_audited_401(running, resp, "duplicate member")


async def test_jwt_svid_over_the_maximum_lifetime_is_audited_401(running: Running) -> None:
    """A lifetime (exp - iat) over 3600 s, the default maximum, or no iat at all: 401, audited."""
    now = int(time.time())
    long_lived = running.jwt_svid(payload=running.svid_claims(iat=now, exp=now + 7200))
    resp = await running.agent(None).request(
        "GET", "/v1/whoami", headers={"Authorization": f"Bearer {long_lived}"}
    )
    await assert_audited_401(running, resp, "is over the maximum of 3600 s")
    no_iat = running.jwt_svid(payload=running.svid_claims(iat=None))
    resp = await running.agent(None).request(
        "GET", "/v1/whoami", headers={"Authorization": f"Bearer {no_iat}"}
    )
    await assert_audited_401(running, resp, "has no 'iat' claim")
    fine = running.jwt_svid()
    resp = await running.agent(None).request(
        "GET", "/v1/whoami", headers={"Authorization": f"Bearer {fine}"}
    )
    assert resp.status == 200, resp.body


def user_token_cases(running: Running) -> list[str]:
    now = int(time.time())
    base = json.dumps(
        {
            "iss": running.td.idp_issuer,
            "aud": "credential-broker",
            "sub": "alice",
            "iat": now,
            "exp": now + 300,
        }
    )
    tokens = [
        running.user_token(payload=with_number(base, name, literal))
        for name in ("exp", "nbf", "iat")
        for literal in HOSTILE_NUMBERS
    ]
    tokens.append(running.user_token(payload=base[:-1] + ', "sub": "admin"}'))
    tokens.append(running.user_token(payload=base[:-1] + ', "iss": "https://evil.example"}'))
    return tokens


async def test_user_tokens_with_hostile_claims_are_403(running: Running) -> None:
    """Hostile numbers or duplicate members in a user token: 403 user_token_invalid, audited."""
    claims = running.agent("claims")
    for token in user_token_cases(running):
        resp = await claims.credentials({"tools": ["customer_data_api"], "user_token": token})
        assert resp.status == 403, resp.body
        assert resp.content_type == PROBLEM
        assert resp.body["reasons"] == ["user_token_invalid"], resp.body
        decision_id = resp.body["decision_id"]
        denied = [r for r in running.audit_records() if r.get("decision_id") == decision_id]
        assert [r["event"] for r in denied] == ["credential.denied"]
    good = running.user_token()
    resp = await claims.credentials({"tools": ["customer_data_api"], "user_token": good})
    assert resp.status == 201, resp.body


async def test_token_exchange_with_hostile_subject_token_is_oauth_error(
    running: Running,
) -> None:
    """A subject token with NaN exp or a duplicate `sub` is an OAuth error, never a 500."""
    now = int(time.time())
    base = json.dumps(
        {"iss": running.td.idp_issuer, "aud": "credential-broker", "sub": "alice", "iat": now}
    )
    for payload in (
        base[:-1] + ', "exp": NaN}',
        base[:-1] + f', "exp": {now + 300}, "sub": "admin"}}',
    ):
        form = (
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange"
            f"&subject_token={running.user_token(payload=payload)}"
            "&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt"
            "&audience=customer_data_api"
        )
        resp = await running.agent("claims").request("POST", "/v1/token", data=form, headers=FORM)
        assert resp.status == 400, resp.body
        assert resp.body["error"] == "invalid_grant", resp.body
        assert resp.body["reasons"] == ["user_token_invalid"]


@pytest.mark.parametrize(
    ("depth", "status", "detail"),
    [
        (200_000, 413, "over the 64 KiB limit"),
        (60_000, 400, "nests arrays/objects deeper than 32 levels"),
    ],
)
async def test_deeply_nested_json_body_is_4xx(
    running: Running, depth: int, status: int, detail: str
) -> None:
    """200k '[' is over the size limit (413); 60k '[' under it is refused for its depth (400)."""
    resp = await running.agent("analytics").request(
        "POST",
        "/v1/credentials",
        data="[" * depth,
        headers={"Content-Type": "application/json"},
    )
    assert resp.status == status, resp.body
    assert resp.content_type == PROBLEM
    assert detail in resp.body["detail"]


@pytest.mark.parametrize("path", ["/v1/token", "/v1/introspect", "/v1/revoke"])
@pytest.mark.parametrize(
    "raw", [b"token=\xff\xfe\xfd", b"token=%FF%FE"], ids=["raw-bytes", "percent-encoded"]
)
async def test_non_utf8_forms_are_400(running: Running, path: str, raw: bytes) -> None:
    """Invalid UTF-8 in a form on the OAuth endpoints is 400 invalid_request, never a 500."""
    resp = await running.agent("analytics").request("POST", path, data=raw, headers=FORM)
    assert resp.status == 400, resp.body
    assert resp.body["error"] == "invalid_request"  # a form on /v1/revoke is RFC 7009: OAuth
    assert "not valid UTF-8" in resp.body["error_description"]


def test_broker_logged_no_unhandled_error(running: Running) -> None:
    """After all of the above the broker process logged no traceback."""
    assert running.process.proc is not None
    assert running.process.proc.poll() is None
    assert "Traceback" not in running.process.stderr
