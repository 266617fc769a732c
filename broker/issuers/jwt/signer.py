"""Compact JWS signing for the broker's own tokens, without re-encoding the constant parts.

A token's header is the same for every token a key signs, so its encoding is computed
once per key; only the claims are serialised and signed per token, with `cryptography`
directly (ES256: the DER signature turned into the JWS `R || S` form of RFC 7518 3.4).
Measured against `jwt.encode` in `bench/decision.py`.
"""

from __future__ import annotations

import base64
import json
from functools import lru_cache

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

__all__ = ["encoded_header", "sign_compact"]

_ES256_HALF = 32
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())
_COMPACT = json.JSONEncoder(separators=(",", ":"))  # built once, not per `json.dumps` call


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


@lru_cache(maxsize=64)
def encoded_header(alg: str, kid: str, typ: str) -> bytes:
    """The base64url JOSE header of every token one key signs."""
    header = {"alg": alg, "kid": kid, "typ": typ}
    return _b64(json.dumps(header, separators=(",", ":")).encode())


def sign_compact(
    header: bytes,
    claims: dict[str, object],
    key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey,
) -> str:
    """A compact JWS: `header.payload.signature`, signed with `key` (EdDSA or ES256)."""
    signing_input = header + b"." + _b64(_COMPACT.encode(claims).encode())
    if isinstance(key, ed25519.Ed25519PrivateKey):
        signature = key.sign(signing_input)
    else:
        r, s = decode_dss_signature(key.sign(signing_input, _ECDSA_SHA256))
        signature = r.to_bytes(_ES256_HALF, "big") + s.to_bytes(_ES256_HALF, "big")
    return (signing_input + b"." + _b64(signature)).decode()
