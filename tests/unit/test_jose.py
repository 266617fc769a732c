"""broker.jose: strict compact JWS parsing, one parse per token, numeric dates and key agreement."""

from __future__ import annotations

import base64
import contextlib
import json
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from broker import jose
from broker.issuers.jwt import JwtIssuer
from broker.issuers.jwt.config import JwtIssuerSettings
from broker.issuers.jwt.keys import KeyRing
from broker.jose import (
    JoseError,
    check_audience,
    check_time_claims,
    decode_verified,
    parse_jwt,
    unverified_claims,
    unverified_header,
    verify_with_keys,
)
from tests.support.clock import ManualClock
from tests.unit.jws_forge import b64, forge

AUD = "spiffe://example.org/broker"
ANY_ALG = ("ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA")
KEY = ec.generate_private_key(ec.SECP256R1())
KEYS: dict[str, object] = {"k1": KEY.public_key()}
NOW = int(time.time())
WEAK_RSA = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - refused


def claims(**extra: Any) -> dict[str, Any]:
    body = {"sub": "spiffe://example.org/agent/a", "aud": [AUD], "iat": NOW, "exp": NOW + 300}
    body.update(extra)
    return {k: v for k, v in body.items() if v is not None}


def valid_token() -> str:
    return jwt.encode(claims(), KEY, algorithm="ES256", headers={"kid": "k1", "typ": "JWT"})


def full_check(token: str, keys: dict[str, object] | None = None) -> dict[str, object]:
    """What a JWT-SVID verifier does with a token, through the public API."""
    parsed = parse_jwt(token, allowed_algorithms=("ES256",), allowed_types=("JWT",))
    verified = verify_with_keys(parsed, parsed.kid, parsed.alg, keys or KEYS, where="the set")
    check_audience(verified, (AUD,))
    check_time_claims(verified, now=time.time(), leeway=30)
    return verified


def swap(token: str, index: int, segment: str) -> str:
    parts = token.split(".")
    parts[index] = segment
    return ".".join(parts)


# -- numbers -------------------------------------------------------------------------------


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"])
@pytest.mark.parametrize("where", ["header", "payload"])
def test_non_finite_numbers_are_refused_when_parsed(literal: str, where: str) -> None:
    """NaN, Infinity and numbers that overflow to infinity are not JSON a JWT may carry."""
    header = '{"alg":"ES256","kid":"k1","x":%s}' % literal if where == "header" else "{}"  # noqa: UP031
    payload = '{"sub":"a","exp":%s}' % literal if where == "payload" else "{}"  # noqa: UP031
    token = forge(header if where == "header" else {"alg": "ES256", "kid": "k1"}, payload, KEY)

    def read() -> object:
        if where == "header":
            return unverified_header(token, allowed_algorithms=("ES256",), allowed_types=None)
        return unverified_claims(token)

    with pytest.raises(JoseError, match=r"has a non-finite number \("):
        read()
    with pytest.raises(JoseError):
        verify_with_keys(token, "k1", "ES256", KEYS, where="the set")


@pytest.mark.parametrize("name", ["exp", "nbf", "iat"])
@pytest.mark.parametrize(
    "value",
    [float("nan"), float("inf"), -float("inf"), 2**64, 10**30, 1e300, -1, -0.5, 253402300800],
)
def test_numeric_dates_out_of_range_are_refused(name: str, value: float) -> None:
    """Exp/nbf/iat must be finite, 0 .. 9999-12-31T23:59:59Z (NaN compares false to all)."""
    body: dict[str, object] = {"exp": NOW + 300, name: value}
    with pytest.raises(JoseError, match=f"'{name}' must be a NumericDate"):
        check_time_claims(body, now=NOW, leeway=0)


@pytest.mark.parametrize("name", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("value", [True, "1800000000", [1], {"a": 1}])
def test_numeric_dates_of_other_types_are_refused(name: str, value: object) -> None:
    """Booleans, strings and containers are not NumericDates."""
    with pytest.raises(JoseError, match=f"'{name}' must be a NumericDate"):
        check_time_claims({"exp": NOW + 300, name: value}, now=NOW, leeway=0)


def test_finite_fractional_numeric_dates_are_accepted() -> None:
    """RFC 7519 NumericDate may be non-integer; finite fractions in range pass."""
    body = {"iat": NOW - 0.25, "nbf": NOW - 0.5, "exp": NOW + 60.5}
    assert check_time_claims(body, now=NOW, leeway=0) == NOW + 60.5
    assert check_time_claims({"exp": 253402300799}, now=NOW, leeway=0) == 253402300799


# -- duplicate members ---------------------------------------------------------------------


def test_duplicate_header_member_is_refused() -> None:
    """A second `alg` must not override the first (no last-wins parsing)."""
    token = forge('{"alg":"none","kid":"k1","alg":"ES256"}', claims(), KEY)
    with pytest.raises(JoseError, match="duplicate member 'alg'"):
        unverified_header(token, allowed_algorithms=("ES256",), allowed_types=None)
    with pytest.raises(JoseError, match="duplicate member 'alg'"):
        verify_with_keys(token, "k1", "ES256", KEYS, where="the set")


def test_duplicate_payload_member_is_refused() -> None:
    """A second `sub` must not override the first, even in a validly signed token."""
    payload = json.dumps(claims())[:-1] + ', "sub": "spiffe://example.org/agent/admin"}'
    token = forge({"alg": "ES256", "kid": "k1"}, payload, KEY)
    with pytest.raises(JoseError, match="duplicate member 'sub'"):
        unverified_claims(token)
    with pytest.raises(JoseError, match="duplicate member 'sub'"):
        verify_with_keys(token, "k1", "ES256", KEYS, where="the set")


def test_deeply_nested_payload_is_a_jose_error() -> None:
    """Nesting beyond the limit is refused up front, never a RecursionError."""
    payload = '{"sub":"a","x":' + "[" * 5000 + "]" * 5000 + "}"
    token = forge({"alg": "ES256", "kid": "k1"}, payload, KEY)
    with pytest.raises(JoseError, match="nested deeper than"):
        unverified_claims(token)
    with pytest.raises(JoseError, match="nested deeper than"):
        verify_with_keys(token, "k1", "ES256", KEYS, where="the set")
    shallow = forge({"alg": "ES256", "kid": "k1"}, {"x": [[1], [2]] * 100, **claims()}, KEY)
    assert unverified_claims(shallow)["x"] == [[1], [2]] * 100


# -- one parse per token -------------------------------------------------------------------


def test_verification_decodes_each_segment_once_and_never_calls_pyjwt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One base64url decode per segment, no second JSON parse inside PyJWT."""
    calls: list[int] = []
    real = base64.urlsafe_b64decode

    def counting(data: Any) -> bytes:
        calls.append(1)
        return real(data)

    def forbidden(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("PyJWT must not parse the token again")

    monkeypatch.setattr(base64, "urlsafe_b64decode", counting)
    monkeypatch.setattr(jwt, "decode", forbidden)
    monkeypatch.setattr(jwt.api_jwt.PyJWT, "decode_complete", forbidden)
    monkeypatch.setattr(jwt.api_jws.PyJWS, "decode_complete", forbidden)
    token = valid_token()
    assert verify_with_keys(token, "k1", "ES256", KEYS, where="the set")["sub"].startswith("spiffe")
    assert len(calls) == 3
    calls.clear()
    assert full_check(token)["aud"] == [AUD]
    assert len(calls) == 3


# -- real tokens, keys and algorithms -------------------------------------------------------


def _key_for(alg: str) -> Any:
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    if alg.startswith("ES"):
        curve = {"256": ec.SECP256R1(), "384": ec.SECP384R1(), "512": ec.SECP521R1()}[alg[2:]]
        return ec.generate_private_key(curve)
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.mark.parametrize("alg", ANY_ALG)
def test_tokens_from_pyjwt_verify(alg: str) -> None:
    """Every allowed algorithm verifies a PyJWT-encoded token, by kid and without kid."""
    key = _key_for(alg)
    token = jwt.encode(claims(), key, algorithm=alg, headers={"kid": "a"})
    keys: dict[str, object] = {"a": key.public_key()}
    assert verify_with_keys(token, "a", alg, keys, where="x")["sub"] == claims()["sub"]
    other = _key_for(alg).public_key()
    assert verify_with_keys(token, None, alg, {"o": other, "a": key.public_key()}, where="x")
    assert decode_verified(token, key.public_key(), alg)["exp"] == NOW + 300
    parsed = parse_jwt(token, allowed_algorithms=ANY_ALG, allowed_types=None)
    assert decode_verified(parsed, key.public_key(), alg) == parsed.claims


def test_tokens_from_joserfc_verify() -> None:
    """Tokens from joserfc (another encoder) verify, when it is installed."""
    pytest.importorskip("joserfc")
    from joserfc import jwt as jose_jwt
    from joserfc.jwk import ECKey

    key = ECKey.generate_key("P-256")
    token = jose_jwt.encode({"alg": "ES256", "kid": "j"}, claims(), key)
    public = jwt.algorithms.ECAlgorithm.from_jwk(json.dumps(key.as_dict(private=False)))
    assert verify_with_keys(token, "j", "ES256", {"j": public}, where="x")["sub"] == claims()["sub"]


@pytest.mark.parametrize(
    ("alg", "key"),
    [
        ("ES256", rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()),
        ("ES256", ec.generate_private_key(ec.SECP384R1()).public_key()),
        ("RS256", KEY.public_key()),
        ("PS256", ed25519.Ed25519PrivateKey.generate().public_key()),
        ("EdDSA", KEY.public_key()),
        ("HS256", KEY.public_key()),
        ("none", KEY.public_key()),
        ("RS256", WEAK_RSA.public_key()),
    ],
)
def test_key_type_must_fit_the_algorithm(alg: str, key: object) -> None:
    """The key type decides which algorithm may use it: no RSA-as-EC, no HMAC, no none."""
    header = {"alg": alg, "kid": "k"}
    token = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims()).encode())}.c2ln"
    with pytest.raises(JoseError, match="does not fit algorithm"):
        decode_verified(token, key, alg)
    with pytest.raises(JoseError):
        verify_with_keys(token, "k", alg, {"k": key}, where="x")


def test_header_alg_must_match_the_alg_verified() -> None:
    """A caller verifying ES384 cannot be handed an ES256 token (and the reverse)."""
    with pytest.raises(JoseError, match="algorithm"):
        decode_verified(
            valid_token(), ec.generate_private_key(ec.SECP384R1()).public_key(), "ES384"
        )
    assert ed448.Ed448PrivateKey.generate()  # EdDSA keys of both curves are known key types


def _padded(token: str) -> str:
    parts = token.split(".")
    parts[2] += "=" * (-len(parts[2]) % 4)
    return ".".join(parts)


def _noncanonical(token: str) -> str:
    # The last character of a 64-byte signature carries 2 bits and 4 unused ones.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    head, sig = token.rsplit(".", 1)
    last = alphabet.index(sig[-1])
    return f"{head}.{sig[:-1]}{alphabet[last | 0x0F if last & 0x0F == 0 else last & ~0x0F]}"


MALFORMED: dict[str, Callable[[str], str]] = {
    "two-segments": lambda t: t.rsplit(".", 1)[0],
    "four-segments": lambda t: t + ".e30",
    "empty-signature": lambda t: t.rsplit(".", 1)[0] + ".",
    "padding": _padded,
    "non-canonical-base64": _noncanonical,
    "standard-base64-alphabet": lambda t: t[:-2] + "+/",
    "whitespace": lambda t: t.replace(".", ". ", 1),
    "non-ascii": lambda t: t + "é",
    "json-serialization": lambda t: json.dumps({"payload": t.split(".")[1]}),
    "utf16-header": lambda t: swap(t, 0, b64('{"alg":"ES256","kid":"k1"}'.encode("utf-16"))),
    "bom-header": lambda t: swap(t, 0, b64(b'\xef\xbb\xbf{"alg":"ES256","kid":"k1"}')),
    "header-not-object": lambda t: swap(t, 0, b64(b'["ES256"]')),
    "payload-not-object": lambda t: swap(t, 1, b64(b'"spiffe://example.org/agent/a"')),
    "crit": lambda t: forge({"alg": "ES256", "kid": "k1", "crit": ["exp"]}, claims(), KEY),
    "crit-b64": lambda t: forge(
        {"alg": "ES256", "kid": "k1", "b64": False, "crit": ["b64"]}, claims(), KEY
    ),
    "oversized": lambda t: forge({"alg": "ES256", "kid": "k1"}, claims(pad="x" * 70000), KEY),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_only_strict_compact_serialization_is_accepted(case: str) -> None:
    """RFC 7515 compact form only: three unpadded canonical base64url segments of UTF-8 JSON."""
    token = MALFORMED[case](valid_token())
    with pytest.raises(JoseError):
        full_check(token)
    with pytest.raises(JoseError):
        verify_with_keys(token, "k1", "ES256", KEYS, where="the set")


def test_parse_jwt_vets_the_header_like_unverified_header() -> None:
    """parse_jwt applies the header rules: forbidden members, allow-list, typ, kid."""
    rules: list[tuple[dict[str, Any], str]] = [
        ({"alg": "ES256", "jku": "https://x"}, "'jku' is not allowed"),
        ({"alg": "RS256"}, "'RS256' is not allowed"),
        ({"alg": "ES256", "typ": "at+jwt"}, r"type 'at\+jwt' is not accepted"),
        ({"alg": "ES256", "kid": ""}, "'kid' must be a non-empty string"),
        ({"kid": "k1"}, "no 'alg'"),
    ]
    for header, message in rules:
        token = forge(header, claims(), KEY)
        with pytest.raises(JoseError, match=message):
            parse_jwt(token, allowed_algorithms=("ES256",), allowed_types=("JWT",))
        with pytest.raises(JoseError, match=message):
            unverified_header(token, allowed_algorithms=("ES256",), allowed_types=("JWT",))
    parsed = parse_jwt(valid_token(), allowed_algorithms=("ES256",), allowed_types=("jwt",))
    assert (parsed.alg, parsed.kid, parsed.claims["aud"]) == ("ES256", "k1", [AUD])


# -- properties ------------------------------------------------------------------------------

TOKEN = valid_token()
ODD_CHARS = "ABCxyz019-_.=+/ \n\x00é\u2028"


@st.composite
def mutations(draw: st.DrawFn) -> str:
    """A valid token changed by one to three character edits or a segment-level change."""
    token = TOKEN
    if draw(st.booleans()):
        for _ in range(draw(st.integers(1, 3))):
            index = draw(st.integers(0, len(token)))
            kind = draw(st.sampled_from(["replace", "insert", "delete"]))
            char = draw(st.sampled_from(ODD_CHARS))
            if kind == "insert" or index == len(token):
                token = token[:index] + char + token[index:]
            elif kind == "replace":
                token = token[:index] + char + token[index + 1 :]
            else:
                token = token[:index] + token[index + 1 :]
    else:
        parts = token.split(".")
        kind = draw(st.sampled_from(["swap", "truncate", "reorder", "bitflip"]))
        if kind == "swap":
            parts[0], parts[1] = parts[1], parts[0]
        elif kind == "truncate":
            which = draw(st.integers(0, 2))
            parts[which] = parts[which][: draw(st.integers(0, len(parts[which]) - 1))]
        elif kind == "reorder":
            parts = draw(st.permutations(parts))
        else:
            which = draw(st.integers(0, 2))
            raw = bytearray(base64.urlsafe_b64decode(parts[which] + "=" * (-len(parts[which]) % 4)))
            bit = draw(st.integers(0, len(raw) * 8 - 1))
            raw[bit // 8] ^= 1 << (bit % 8)
            parts[which] = b64(bytes(raw))
        token = ".".join(parts)
    assume(token != TOKEN)
    return token


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations())
def test_mutated_tokens_never_verify_and_only_raise_jose_error(token: str) -> None:
    """Any change to a valid token is refused with JoseError, never accepted or crashed."""
    assert full_check(TOKEN)
    with pytest.raises(JoseError):
        full_check(token)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b64(b) + "." + b64(b)))
def test_arbitrary_text_only_raises_jose_error(text: str) -> None:
    """Arbitrary input never escapes as anything but JoseError."""
    with pytest.raises(JoseError):
        full_check(text)
    for reader in (
        unverified_claims,
        lambda t: unverified_header(t, allowed_algorithms=ANY_ALG, allowed_types=None),
    ):
        with contextlib.suppress(JoseError):
            reader(text)


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["exp", "nbf", "iat"]), JSON_VALUES)
def test_any_signed_numeric_date_value_is_checked_or_refused(name: str, value: object) -> None:
    """A signed token with any JSON value in exp/nbf/iat either passes the rules or is JoseError."""
    body = {**claims(), name: value}
    token = forge({"alg": "ES256", "kid": "k1", "typ": "JWT"}, json.dumps(body), KEY)
    try:
        verified = full_check(token)
    except JoseError:
        return
    number = verified[name]
    assert isinstance(number, int | float)
    assert not isinstance(number, bool)
    assert math.isfinite(number)
    assert 0 <= number <= jose.MAX_NUMERIC_DATE


# -- subject tokens (broker tokens presented back) --------------------------------------------


@pytest.mark.parametrize("exp", ["NaN", "Infinity", "1e400", str(2**64), "1e300"])
def test_broker_tokens_with_hostile_exp_are_not_valid(tmp_path: Path, exp: str) -> None:
    """The issuer's own verify (token exchange, introspection) refuses non-finite/huge exp."""
    clock = ManualClock(datetime.fromtimestamp(1_800_000_000, UTC))
    keys = KeyRing(
        JwtIssuerSettings(issuer="https://broker.test", keys_file=tmp_path / "keys.json"), clock
    )
    keys.load()
    issuer = JwtIssuer("https://broker.test", keys, clock)
    key = keys.signing_key()
    header = {"alg": key.alg, "kid": key.kid, "typ": "at+jwt"}
    good = '{"iss":"https://broker.test","jti":"j","exp":1800000300}'
    assert issuer.verify(forge(header, good, key.private_key, alg=key.alg)) is not None
    hostile = '{"iss":"https://broker.test","jti":"j","exp":%s}' % exp  # noqa: UP031
    assert issuer.verify(forge(header, hostile, key.private_key, alg=key.alg)) is None
