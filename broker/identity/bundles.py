"""Parsing of X.509 (PEM) and JWT (JWKS) trust bundles."""

from __future__ import annotations

import json
from collections.abc import Mapping

import jwt
from cryptography import x509

from broker.identity.material import IdentityError, PublicKey

__all__ = ["parse_jwks", "parse_jwt_bundles", "parse_pem_certificates"]


def parse_pem_certificates(data: bytes, *, what: str) -> list[x509.Certificate]:
    """Parse one or more PEM certificates.

    Raises:
        IdentityError: Nothing parseable, or a malformed block.
    """
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise IdentityError(f"{what} holds no valid PEM certificate") from None
    if not certs:
        raise IdentityError(f"{what} holds no certificate")
    return certs


def parse_jwks(document: Mapping[str, object], *, what: str) -> dict[str, PublicKey]:
    """Parse the JWT authorities of a JWKS or SPIFFE bundle document.

    Entries with `use` other than `jwt-svid` (for example SPIFFE bundle `x509-svid`
    entries) are skipped. Every JWT authority needs a `kid`, and private members are
    refused: a bundle that carries private key material is a misconfiguration.

    Raises:
        IdentityError: Malformed document or entry.
    """
    keys = document.get("keys")
    if not isinstance(keys, list):
        raise IdentityError(f"{what} is not a JWKS document (no 'keys' list)")
    out: dict[str, PublicKey] = {}
    for index, entry in enumerate(keys):
        if not isinstance(entry, dict):
            raise IdentityError(f"{what}: keys[{index}] is not an object")
        use = entry.get("use")
        if use is not None and use not in {"jwt-svid", "sig"}:
            continue
        if any(member in entry for member in ("d", "p", "q", "dp", "dq", "qi", "k")):
            raise IdentityError(f"{what}: keys[{index}] carries private key material")
        kid = entry.get("kid")
        if not isinstance(kid, str) or not kid:
            raise IdentityError(f"{what}: keys[{index}] has no 'kid'")
        try:
            key = jwt.PyJWK(entry).key
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
            raise IdentityError(
                f"{what}: keys[{index}] ({kid}) is not a usable public key"
            ) from None
        out[kid] = key
    return out


def parse_jwt_bundles(
    data: bytes, *, default_trust_domain: str, what: str
) -> dict[str, dict[str, PublicKey]]:
    """Parse a JWT bundle file.

    Accepts a JWKS or SPIFFE bundle (for `default_trust_domain`), or an object mapping
    trust domain names to such documents.

    Raises:
        IdentityError: Malformed file.
    """
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise IdentityError(f"{what} is not valid JSON") from None
    if not isinstance(document, dict):
        raise IdentityError(f"{what} must be a JSON object")
    if "keys" in document:
        return {default_trust_domain: parse_jwks(document, what=what)}
    out: dict[str, dict[str, PublicKey]] = {}
    for trust_domain, jwks in document.items():
        name = trust_domain.removeprefix("spiffe://")
        if not isinstance(jwks, dict):
            raise IdentityError(f"{what}: entry {trust_domain!r} is not a JWKS object")
        out[name] = parse_jwks(jwks, what=f"{what} [{name}]")
    return out
