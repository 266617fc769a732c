"""Shared JWT checks: header rules, algorithm/key agreement and time claims.

Used by every JWT the broker *validates* (JWT-SVIDs, user tokens, broker-issued tokens
presented back). Time is checked here against the injected clock, not by pyjwt, so that
tests can move time and the leeway is bounded in one place.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Collection, Mapping

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

__all__ = [
    "FORBIDDEN_HEADERS",
    "MAX_LEEWAY_SECONDS",
    "JoseError",
    "check_audience",
    "check_time_claims",
    "decode_verified",
    "jwk_thumbprint",
    "key_fits_algorithm",
    "public_jwk",
    "unverified_claims",
    "unverified_header",
    "verify_with_keys",
]

# Headers that make a validator fetch or trust key material named by the token itself.
FORBIDDEN_HEADERS = ("jku", "x5u", "jwk", "x5c", "crit")
MAX_LEEWAY_SECONDS = 60

_EC_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}


class JoseError(ValueError):
    """A JWT failed a check; the message is fit for the caller."""


def _b64url_json(segment: str, what: str) -> dict[str, object]:
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise JoseError(f"the JWT {what} is not base64url-encoded JSON") from None
    if not isinstance(value, dict):
        raise JoseError(f"the JWT {what} is not a JSON object")
    return value


def _segments(token: str) -> list[str]:
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):  # noqa: PLR2004 - JWS compact serialization
        raise JoseError("not a JWS compact serialization (header.payload.signature)")
    return parts


def unverified_header(
    token: str, *, allowed_algorithms: Collection[str], allowed_types: Collection[str] | None
) -> dict[str, object]:
    """Read and vet a JWT's protected header before anything else is done with it.

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
    header = _b64url_json(_segments(token)[0], "header")
    for name in FORBIDDEN_HEADERS:
        if name in header:
            raise JoseError(f"JWT header {name!r} is not allowed")
    alg = header.get("alg")
    if not isinstance(alg, str) or not alg:
        raise JoseError("JWT header has no 'alg'")
    if alg not in allowed_algorithms:
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
    return header


def unverified_claims(token: str) -> dict[str, object]:
    """Read a JWT's claims without verifying them (only to pick the verification key)."""
    return _b64url_json(_segments(token)[1], "payload")


def key_fits_algorithm(key: object, alg: str) -> bool:
    """Whether a public key can verify `alg` (prevents algorithm/key confusion)."""
    if alg.startswith(("RS", "PS")):
        return isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048  # noqa: PLR2004
    if alg in _EC_CURVES:
        return isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == _EC_CURVES[alg]
    if alg == "EdDSA":
        return isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)
    return False


def decode_verified(token: str, key: object, alg: str) -> dict[str, object]:
    """Verify the signature and return the claims (time and audience are checked apart).

    Raises:
        JoseError: Bad signature or undecodable token.
    """
    if not key_fits_algorithm(key, alg):
        raise JoseError(f"the signing key does not fit algorithm {alg!r}")
    try:
        claims = jwt.decode(
            token,
            key=key,  # type: ignore[arg-type]
            algorithms=[alg],
            options={
                "verify_signature": True,
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_aud": False,
                "verify_iss": False,
                "verify_sub": False,
                "verify_jti": False,
            },
        )
    except jwt.InvalidSignatureError:
        raise JoseError("JWT signature does not verify") from None
    except jwt.PyJWTError:
        raise JoseError("JWT could not be decoded") from None
    if not isinstance(claims, dict):
        raise JoseError("JWT payload is not a JSON object")
    return claims


def verify_with_keys(
    token: str, kid: object, alg: str, keys: Mapping[str, object], *, where: str
) -> dict[str, object]:
    """Verify against a key set: the key named by `kid`, or (no `kid`) each key fitting `alg`.

    Args:
        token: The JWT.
        kid: The header's `kid`, if any.
        alg: The header's (already allowed) algorithm.
        keys: Public keys by `kid`.
        where: Names the key set in messages ("the issuer's key set").

    Raises:
        JoseError: No such key, or no key verifies the signature.
    """
    if isinstance(kid, str):
        key = keys.get(kid)
        if key is None:
            raise JoseError(f"no key with kid {kid!r} in {where}")
        return decode_verified(token, key, alg)
    for key in keys.values():
        if key_fits_algorithm(key, alg):
            try:
                return decode_verified(token, key, alg)
            except JoseError:
                continue
    raise JoseError(f"JWT signature does not verify against any key in {where}")


def _numeric(claims: Mapping[str, object], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise JoseError(f"JWT claim {name!r} must be a number")
    return float(value)


def check_time_claims(
    claims: Mapping[str, object], *, now: float, leeway: int, require_exp: bool = True
) -> float | None:
    """Check `exp`, `nbf` and `iat` against `now` with a bounded leeway.

    Returns:
        The `exp` value (or None when absent and not required).

    Raises:
        JoseError: Expired, not yet valid, issued in the future, or `exp` missing.
    """
    leeway = min(max(leeway, 0), MAX_LEEWAY_SECONDS)
    exp = _numeric(claims, "exp")
    if exp is None:
        if require_exp:
            raise JoseError("JWT has no 'exp' claim")
    elif now >= exp + leeway:
        raise JoseError("JWT has expired")
    nbf = _numeric(claims, "nbf")
    if nbf is not None and now + leeway < nbf:
        raise JoseError("JWT is not valid yet ('nbf' is in the future)")
    iat = _numeric(claims, "iat")
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
