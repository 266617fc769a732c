"""Sign JWS compact tokens from raw JSON text, so tests can embed what encoders refuse.

PyJWT (like every JOSE library) serializes a dict, so it cannot produce a duplicate
member, `NaN` or `1e400`; hostile-input tests need those bytes signed as they are.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "256": hashes.SHA256,
    "384": hashes.SHA384,
    "512": hashes.SHA512,
}


def b64(data: bytes) -> str:
    """base64url without padding (RFC 7515 section 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(key: Any, alg: str, message: bytes) -> bytes:
    """The JWS signature of `message` (ECDSA as raw r||s, RFC 7518 section 3.4)."""
    if alg == "EdDSA":
        assert isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey)
        return key.sign(message)
    digest = _HASHES[alg[2:]]()
    if alg.startswith("ES"):
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        r, s = decode_dss_signature(key.sign(message, ec.ECDSA(digest)))
        size = (key.curve.key_size + 7) // 8
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    assert isinstance(key, rsa.RSAPrivateKey)
    if alg.startswith("PS"):
        pss = padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
        return key.sign(message, pss, digest)
    return key.sign(message, padding.PKCS1v15(), digest)


def _text(part: str | Mapping[str, Any]) -> str:
    return part if isinstance(part, str) else json.dumps(part, separators=(",", ":"))


def forge(
    header: str | Mapping[str, Any],
    payload: str | Mapping[str, Any],
    key: Any,
    alg: str = "ES256",
) -> str:
    """A validly signed compact JWS whose header and payload are exactly the given JSON text."""
    signing_input = f"{b64(_text(header).encode())}.{b64(_text(payload).encode())}"
    return f"{signing_input}.{b64(sign(key, alg, signing_input.encode()))}"
