"""JWT-SVID bearers without a server: hostile numbers, duplicate members, lifetime, one parse."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from broker.authn.config import JwtSvidSettings
from broker.authn.jwt_svid import JwtSvidVerifier
from broker.domain import AuthMethod
from broker.errors import Unauthenticated
from broker.identity.material import TrustBundle
from tests.support.clock import ManualClock
from tests.unit.jws_forge import forge

TD = "example.org"
AUD = "spiffe://example.org/broker"
SUB = "spiffe://example.org/agent/claims"
KEY = ec.generate_private_key(ec.SECP256R1())
NOW = 1_800_000_000
HEADER = {"alg": "ES256", "kid": "k1", "typ": "JWT"}


class _Snapshot:
    def bundle(self, trust_domain: str) -> TrustBundle | None:
        if trust_domain != TD:
            return None
        return TrustBundle(TD, jwt_authorities={"k1": KEY.public_key()})


class _Source:
    def snapshot(self) -> _Snapshot:
        return _Snapshot()


def verifier(**options: Any) -> JwtSvidVerifier:
    settings = JwtSvidSettings(audience=(AUD,), leeway_seconds=30, **options)
    clock = ManualClock(datetime.fromtimestamp(NOW, UTC))
    return JwtSvidVerifier(_Source(), settings, frozenset({TD}), clock)  # type: ignore[arg-type]


def payload(**claims: Any) -> dict[str, Any]:
    body = {"sub": SUB, "aud": [AUD], "iat": NOW, "exp": NOW + 300, "jti": "j-1"}
    body.update(claims)
    return {k: v for k, v in body.items() if v is not None}


def test_valid_jwt_svid_is_the_caller() -> None:
    """A well-formed JWT-SVID names the caller and its expiry."""
    caller = verifier().verify(forge(HEADER, payload(), KEY))
    assert (caller.spiffe_id, caller.method, caller.jwt_svid_jti) == (
        SUB,
        AuthMethod.JWT_SVID,
        "j-1",
    )
    assert caller.expires_at == datetime.fromtimestamp(NOW + 300, UTC)


@pytest.mark.parametrize("name", ["exp", "nbf", "iat"])
@pytest.mark.parametrize(
    "literal", ["NaN", "Infinity", "-Infinity", "1e400", str(2**64), "1e300", "-1", "null", "true"]
)
def test_hostile_numeric_dates_are_unauthenticated(name: str, literal: str) -> None:
    """Non-finite, huge, negative or non-numeric exp/nbf/iat are a 401, never a crash or a pass."""
    text = json.dumps(payload(**{name: 0}))
    text = text.replace(f'"{name}": 0', f'"{name}": {literal}')
    with pytest.raises(
        Unauthenticated, match=r"bearer JWT-SVID rejected: .*(NumericDate|non-finite)"
    ):
        verifier().verify(forge(HEADER, text, KEY))


@pytest.mark.parametrize(
    ("header", "body"),
    [
        ('{"alg":"none","kid":"k1","typ":"JWT","alg":"ES256"}', json.dumps(payload())),
        (
            json.dumps(HEADER),
            json.dumps(payload())[:-1] + ', "sub": "spiffe://example.org/admin"}',
        ),
    ],
    ids=["duplicate-alg", "duplicate-sub"],
)
def test_duplicate_members_are_unauthenticated(header: str, body: str) -> None:
    """A second `alg` or `sub` never overrides the first: the token is refused."""
    with pytest.raises(Unauthenticated, match="duplicate member"):
        verifier().verify(forge(header, body, KEY))


def test_lifetime_over_the_maximum_is_unauthenticated() -> None:
    """A lifetime exp - iat above max_lifetime_seconds is refused; exactly the maximum passes."""
    check = verifier(max_lifetime_seconds=600)
    assert check.verify(forge(HEADER, payload(exp=NOW + 600), KEY)).spiffe_id == SUB
    with pytest.raises(Unauthenticated, match=r"lifetime \(exp - iat\) of 601 s is over"):
        check.verify(forge(HEADER, payload(exp=NOW + 601), KEY))


def test_default_maximum_lifetime_is_one_hour() -> None:
    """Without configuration a JWT-SVID may live 3600 s, not more."""
    assert JwtSvidSettings(audience=(AUD,)).max_lifetime_seconds == 3600
    assert verifier().verify(forge(HEADER, payload(exp=NOW + 3600), KEY)).spiffe_id == SUB
    with pytest.raises(Unauthenticated, match="is over the maximum of 3600 s"):
        verifier().verify(forge(HEADER, payload(iat=NOW - 10, exp=NOW + 3600), KEY))


def test_jwt_svid_without_iat_is_unauthenticated() -> None:
    """Without `iat` the lifetime cannot be bounded, so the token is refused (SPIRE sets it)."""
    with pytest.raises(Unauthenticated, match="has no 'iat'"):
        verifier().verify(forge(HEADER, payload(iat=None), KEY))


def test_verification_parses_the_token_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Header, claims and signature come from one parse: three base64url decodes, no PyJWT."""
    calls: list[int] = []
    real = base64.urlsafe_b64decode

    def counting(data: Any) -> bytes:
        calls.append(1)
        return real(data)

    def forbidden(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("PyJWT must not parse the token again")

    token = jwt.encode(payload(), KEY, algorithm="ES256", headers={"kid": "k1", "typ": "JWT"})
    monkeypatch.setattr(base64, "urlsafe_b64decode", counting)
    monkeypatch.setattr(jwt, "decode", forbidden)
    monkeypatch.setattr(jwt.api_jws.PyJWS, "decode_complete", forbidden)
    assert verifier().verify(token).spiffe_id == SUB
    assert len(calls) == 3
