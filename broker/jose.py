"""Shared JWT checks: strict compact parsing, signature, algorithm/key agreement, time claims.

Used by every JWT the broker *validates* (JWT-SVIDs, user tokens, broker-issued tokens
presented back). A token is parsed exactly once (`parse_jwt`): split into its three
segments, each base64url-decoded once, header and payload parsed by one strict JSON
decoder; the signature is then verified over the `header.payload` bytes with
`cryptography`, and the claims are checked here. PyJWT is not asked to decode it again.

Strictness, and why:
- JWS compact serialization only: exactly three non-empty segments of unpadded, canonical
  base64url (RFC 7515 section 2); a segment whose unused trailing bits are set is refused,
  so no two spellings of a signature exist. Header and payload are UTF-8 JSON objects.
- Duplicate member names are refused (RFC 7515 section 4, RFC 7519 section 4 allow a
  parser to reject them; last-wins would let a second `alg` or `sub` override the first).
- `NaN`, `Infinity` and numbers that overflow to infinity (`1e400`) are refused when
  parsed, and nesting deeper than `MAX_JSON_DEPTH` before parsing (no RecursionError).
- `exp`, `nbf` and `iat` must be NumericDates from 0 to `MAX_NUMERIC_DATE`: integers or
  finite fractions (RFC 7519 section 2 allows non-integer values, and some issuers write
  them; SPIRE and PyJWT write integers). The upper bound is the last second a `datetime`
  can hold, so nothing downstream overflows.
- The key type must fit `alg` (no HMAC, no `none`, no RSA key for an EC algorithm, RSA of
  2048 bits at least) and headers that name key material (`jku`, `x5u`, `jwk`, `x5c`) or
  extensions (`crit`: the broker understands none) are refused.

Time is checked against the injected clock, so that tests can move time and the leeway
is bounded in one place.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from broker.strictjson import MAX_JSON_DEPTH, DuplicateMember, too_deep, unique_members

__all__ = [
    "FORBIDDEN_HEADERS",
    "MAX_COMPACT_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_LEEWAY_SECONDS",
    "MAX_NUMERIC_DATE",
    "JoseError",
    "ParsedJwt",
    "check_audience",
    "check_time_claims",
    "decode_verified",
    "jwk_thumbprint",
    "key_fits_algorithm",
    "parse_jwt",
    "public_jwk",
    "unverified_claims",
    "unverified_header",
    "verify_with_keys",
]

# Headers that make a validator fetch or trust key material named by the token itself, and
# `crit`, which names extensions a validator must understand (the broker understands none).
FORBIDDEN_HEADERS = ("jku", "x5u", "jwk", "x5c", "crit")
MAX_LEEWAY_SECONDS = 60
MAX_COMPACT_BYTES = 64 * 1024  # the parser's own bound; callers keep smaller ones
MAX_NUMERIC_DATE = 253_402_300_799  # 9999-12-31T23:59:59Z, the last second datetime holds

_EC_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}
_RSA_ALGORITHMS = frozenset(f"{p}{n}" for p in ("RS", "PS") for n in ("256", "384", "512"))
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "256": hashes.SHA256,
    "384": hashes.SHA384,
    "512": hashes.SHA512,
}
_MIN_RSA_BITS = 2048
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
_B64URL_VALUES = {
    c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
}
# Bits of the last character that encode nothing, by segment length modulo 4.
_UNUSED_BITS = {2: 0x0F, 3: 0x03}


class JoseError(ValueError):
    """A JWT failed a check; the message is fit for the caller."""


class _Refused(ValueError):
    """Raised by the JSON hooks; becomes a JoseError naming the segment."""


def _refuse_constant(name: str) -> object:
    raise _Refused(f"has a non-finite number ({name})")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):  # 1e400 overflows to infinity
        raise _Refused(f"has a non-finite number ({text[:24]})")
    return value


_DECODER = json.JSONDecoder(
    parse_float=_finite_float,
    parse_constant=_refuse_constant,
    object_pairs_hook=unique_members,
)


def _b64url(segment: str, what: str) -> bytes:
    """Strict base64url: unpadded, URL-safe alphabet, canonical trailing bits."""
    remainder = len(segment) % 4
    if (
        remainder == 1
        or not _SEGMENT.fullmatch(segment)
        or (remainder and _B64URL_VALUES[segment[-1]] & _UNUSED_BITS[remainder])
    ):
        raise JoseError(f"the JWT {what} is not unpadded canonical base64url")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-remainder % 4))
    except binascii.Error:  # unreachable after the checks above; kept as a guard
        raise JoseError(f"the JWT {what} is not unpadded canonical base64url") from None


def _json_object(segment: str, what: str) -> dict[str, object]:
    raw = _b64url(segment, what)
    if too_deep(raw):
        raise JoseError(f"the JWT {what} is nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise JoseError(f"the JWT {what} is not UTF-8") from None
    try:
        value = _DECODER.decode(text)
    except (_Refused, DuplicateMember) as exc:
        raise JoseError(f"the JWT {what} {exc}") from None
    except ValueError:  # JSONDecodeError, or an integer over Python's digit limit
        raise JoseError(f"the JWT {what} is not valid JSON") from None
    if not isinstance(value, dict):
        raise JoseError(f"the JWT {what} is not a JSON object")
    return value


def _segments(token: str) -> list[str]:
    if len(token) > MAX_COMPACT_BYTES:
        raise JoseError(f"the JWT is over {MAX_COMPACT_BYTES} bytes")
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):  # noqa: PLR2004 - JWS compact serialization
        raise JoseError("not a JWS compact serialization (header.payload.signature)")
    return parts


def _vet_header(
    header: Mapping[str, object],
    allowed_algorithms: Collection[str] | None,
    allowed_types: Collection[str] | None,
) -> None:
    for name in FORBIDDEN_HEADERS:
        if name in header:
            raise JoseError(f"JWT header {name!r} is not allowed")
    alg = header.get("alg")
    if not isinstance(alg, str) or not alg:
        raise JoseError("JWT header has no 'alg'")
    if allowed_algorithms is not None and alg not in allowed_algorithms:
        raise JoseError(f"JWT algorithm {alg!r} is not allowed")
    typ = header.get("typ")
    if (
        typ is not None
        and allowed_types is not None
        and (not isinstance(typ, str) or typ.lower() not in {t.lower() for t in allowed_types})
    ):
        raise JoseError(f"JWT type {typ!r} is not accepted")
    kid = header.get("kid")
    if kid is not None and (not isinstance(kid, str) or not kid):
        raise JoseError("JWT header 'kid' must be a non-empty string")


@dataclass(frozen=True, slots=True, repr=False)
class ParsedJwt:
    """A compact JWS parsed once: vetted header, claims (unverified until a key verifies them).

    Attributes:
        header: The protected header (its rules already checked).
        claims: The payload's claims; trust them only from `verify_with_keys`/`decode_verified`.
        signing_input: The ASCII `header.payload` bytes the signature covers.
        signature: The decoded signature.
    """

    header: dict[str, object]
    claims: dict[str, object]
    signing_input: bytes
    signature: bytes

    @property
    def alg(self) -> str:
        """The header's `alg` (a non-empty string, checked when parsed)."""
        return str(self.header["alg"])

    @property
    def kid(self) -> str | None:
        """The header's `kid`, if any."""
        kid = self.header.get("kid")
        return kid if isinstance(kid, str) else None

    def __repr__(self) -> str:
        """Never the token: it is a bearer credential."""
        return f"ParsedJwt(alg={self.alg!r}, kid={self.kid!r})"


def parse_jwt(
    token: str,
    *,
    allowed_algorithms: Collection[str] | None,
    allowed_types: Collection[str] | None,
) -> ParsedJwt:
    """Parse a compact JWT once, vetting its header before its payload is decoded.

    Args:
        token: The compact JWT.
        allowed_algorithms: The `alg` allow-list (never `none`, never HMAC), or None to
            leave it to the verification step (the key type must still fit `alg`).
        allowed_types: Acceptable `typ` values when present (case-insensitive), or None
            for any.

    Returns:
        The parsed token; nothing in it is verified yet.

    Raises:
        JoseError: Not a strict compact JWS, a forbidden header member, an algorithm or
            type not allowed, or a payload that is not a strict JSON object.
    """
    head, payload, signature = _segments(token)
    header = _json_object(head, "header")
    _vet_header(header, allowed_algorithms, allowed_types)
    claims = _json_object(payload, "payload")
    return ParsedJwt(
        header=header,
        claims=claims,
        signing_input=f"{head}.{payload}".encode("ascii"),
        signature=_b64url(signature, "signature"),
    )


def unverified_header(
    token: str, *, allowed_algorithms: Collection[str], allowed_types: Collection[str] | None
) -> dict[str, object]:
    """Read and vet a JWT's protected header before anything else is done with it.

    (Verifiers that go on to check the signature use `parse_jwt`, which parses once.)

    Args:
        token: The compact JWT.
        allowed_algorithms: The `alg` allow-list (never `none`, never HMAC).
        allowed_types: Acceptable `typ` values when present (case-insensitive), or None
            for any.

    Returns:
        The header.

    Raises:
        JoseError: Malformed header, forbidden member or algorithm not allowed.
    """
    header = _json_object(_segments(token)[0], "header")
    _vet_header(header, allowed_algorithms, allowed_types)
    return header


def unverified_claims(token: str) -> dict[str, object]:
    """Read a JWT's claims without verifying them (to route a token, or to audit a failure).

    Raises:
        JoseError: Not a strict compact JWS, or the payload is not a strict JSON object.
    """
    return _json_object(_segments(token)[1], "payload")


def key_fits_algorithm(key: object, alg: str) -> bool:
    """Whether a public key can verify `alg` (prevents algorithm/key confusion)."""
    if alg in _RSA_ALGORITHMS:
        return isinstance(key, rsa.RSAPublicKey) and key.key_size >= _MIN_RSA_BITS
    if alg in _EC_CURVES:
        return isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == _EC_CURVES[alg]
    if alg == "EdDSA":
        return isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)
    return False


def _signature_verifies(key: object, alg: str, message: bytes, signature: bytes) -> bool:
    """Verify a JWS signature (RFC 7518 section 3); the caller checked key/alg agreement."""
    try:
        if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            key.verify(signature, message)
            return True
        digest = _HASHES[alg[2:]]()
        if isinstance(key, ec.EllipticCurvePublicKey):
            size = (key.curve.key_size + 7) // 8
            if len(signature) != 2 * size:  # raw r || s, each exactly the curve's size
                return False
            der = encode_dss_signature(
                int.from_bytes(signature[:size], "big"), int.from_bytes(signature[size:], "big")
            )
            key.verify(der, message, ec.ECDSA(digest))
            return True
        if isinstance(key, rsa.RSAPublicKey):
            scheme: padding.AsymmetricPadding = (
                padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
                if alg.startswith("PS")
                else padding.PKCS1v15()
            )
            key.verify(signature, message, scheme, digest)
            return True
    except (InvalidSignature, ValueError):
        return False
    return False


def _parsed(token: str | ParsedJwt) -> ParsedJwt:
    if isinstance(token, ParsedJwt):
        return token
    return parse_jwt(token, allowed_algorithms=None, allowed_types=None)


def decode_verified(token: str | ParsedJwt, key: object, alg: str) -> dict[str, object]:
    """Verify the signature and return the claims (time and audience are checked apart).

    Args:
        token: The compact JWT, or the same already parsed by `parse_jwt`.
        key: The public key.
        alg: The (already allowed) algorithm; the header's `alg` must be exactly this.

    Raises:
        JoseError: Bad signature, a key that does not fit `alg`, or a malformed token.
    """
    parsed = _parsed(token)
    if parsed.alg != alg:
        raise JoseError(f"JWT algorithm {parsed.alg!r} is not the expected {alg!r}")
    if not key_fits_algorithm(key, alg):
        raise JoseError(f"the signing key does not fit algorithm {alg!r}")
    if not _signature_verifies(key, alg, parsed.signing_input, parsed.signature):
        raise JoseError("JWT signature does not verify")
    return parsed.claims


def verify_with_keys(
    token: str | ParsedJwt, kid: object, alg: str, keys: Mapping[str, object], *, where: str
) -> dict[str, object]:
    """Verify against a key set: the key named by `kid`, or (no `kid`) each key fitting `alg`.

    Args:
        token: The JWT, preferably as parsed by `parse_jwt` (then it is not parsed again).
        kid: The header's `kid`, if any.
        alg: The header's (already allowed) algorithm.
        keys: Public keys by `kid`.
        where: Names the key set in messages ("the issuer's key set").

    Returns:
        The verified claims.

    Raises:
        JoseError: Malformed token, no such key, or no key verifies the signature.
    """
    parsed = _parsed(token)
    if parsed.alg != alg:
        raise JoseError(f"JWT algorithm {parsed.alg!r} is not the expected {alg!r}")
    if isinstance(kid, str):
        key = keys.get(kid)
        if key is None:
            raise JoseError(f"no key with kid {kid!r} in {where}")
        return decode_verified(parsed, key, alg)
    for key in keys.values():
        if key_fits_algorithm(key, alg) and _signature_verifies(
            key, alg, parsed.signing_input, parsed.signature
        ):
            return parsed.claims
    raise JoseError(f"JWT signature does not verify against any key in {where}")


def _numeric_date(claims: Mapping[str, object], name: str) -> float | None:
    if name not in claims:
        return None
    value = claims[name]
    # `not 0 <= value` also catches NaN, for which every comparison is false.
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 <= value <= MAX_NUMERIC_DATE
    ):
        raise JoseError(
            f"JWT claim {name!r} must be a NumericDate "
            f"(seconds since the epoch, 0 to {MAX_NUMERIC_DATE})"
        )
    return float(value)


def check_time_claims(
    claims: Mapping[str, object], *, now: float, leeway: int, require_exp: bool = True
) -> float | None:
    """Check `exp`, `nbf` and `iat` against `now` with a bounded leeway.

    Each present claim must first be a NumericDate in range (finite, 0 to
    MAX_NUMERIC_DATE); only then are they compared with `now`.

    Returns:
        The `exp` value (or None when absent and not required).

    Raises:
        JoseError: A malformed or out-of-range value, expired, not yet valid, issued in
            the future, or `exp` missing.
    """
    leeway = min(max(leeway, 0), MAX_LEEWAY_SECONDS)
    exp = _numeric_date(claims, "exp")
    nbf = _numeric_date(claims, "nbf")
    iat = _numeric_date(claims, "iat")
    if exp is None:
        if require_exp:
            raise JoseError("JWT has no 'exp' claim")
    elif now >= exp + leeway:
        raise JoseError("JWT has expired")
    if nbf is not None and now + leeway < nbf:
        raise JoseError("JWT is not valid yet ('nbf' is in the future)")
    if iat is not None and now + leeway < iat:
        raise JoseError("JWT was issued in the future ('iat')")
    return exp


def check_audience(claims: Mapping[str, object], expected: Collection[str]) -> None:
    """Require `aud` to contain one of `expected`.

    Raises:
        JoseError: `aud` missing, malformed or not ours.
    """
    aud = claims.get("aud")
    if isinstance(aud, str):
        values = [aud]
    elif isinstance(aud, list) and all(isinstance(a, str) for a in aud):
        values = [str(a) for a in aud]
    else:
        raise JoseError("JWT has no valid 'aud' claim")
    if not values or not any(a in expected for a in values):
        raise JoseError(f"JWT 'aud' does not contain {' or '.join(sorted(expected))}")


def public_jwk(
    key: object, *, alg: str, kid: str | None = None, use: str = "sig"
) -> dict[str, str]:
    """The public JWK of a key, with `kid` defaulting to its RFC 7638 thumbprint.

    Raises:
        JoseError: The key type is not supported.
    """
    public = getattr(key, "public_key", None)
    public_key = public() if callable(public) and not _is_public(key) else key
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public_key, as_dict=True)
    elif isinstance(public_key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        jwk = OKPAlgorithm.to_jwk(public_key, as_dict=True)
    elif isinstance(public_key, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public_key, as_dict=True)
    else:
        raise JoseError("unsupported key type for a JWK")
    out = {k: str(v) for k, v in jwk.items() if k in {"kty", "crv", "x", "y", "n", "e"}}
    out["kid"] = kid or jwk_thumbprint(out)
    out["alg"] = alg
    out["use"] = use
    return out


def _is_public(key: object) -> bool:
    return isinstance(
        key,
        ec.EllipticCurvePublicKey
        | ed25519.Ed25519PublicKey
        | ed448.Ed448PublicKey
        | rsa.RSAPublicKey,
    )


def jwk_thumbprint(jwk: Mapping[str, str]) -> str:
    """RFC 7638 JWK SHA-256 thumbprint (base64url, unpadded)."""
    required = {
        "EC": ("crv", "kty", "x", "y"),
        "OKP": ("crv", "kty", "x"),
        "RSA": ("e", "kty", "n"),
    }
    members = required.get(jwk.get("kty", ""))
    if members is None:
        raise JoseError("unsupported JWK key type")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
