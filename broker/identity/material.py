"""Identity material: the broker's own X.509-SVID and the trust bundles, as one snapshot.

Both identity sources produce an `IdentitySnapshot`; everything downstream (the TLS
listener, the authenticators, the Vault login) reads the current snapshot and never the
source's internals. Snapshots are immutable, so a rotation is one reference swap.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)

from broker.errors import Unavailable
from broker.spiffe_id import parse_spiffe_id
from broker.tlsutil import spiffe_id_of

__all__ = [
    "IdentityError",
    "IdentitySnapshot",
    "PublicKey",
    "ServingSvid",
    "TrustBundle",
    "build_snapshot",
    "spiffe_id_of",
]

PublicKey = CertificatePublicKeyTypes


class IdentityError(Unavailable):
    """Identity material is missing, unreadable or invalid.

    An `Unavailable`: a request that needs the broker's identity (or a trust bundle) and
    cannot have it gets a 503, like for any other backend.
    """

    def __init__(self, detail: str) -> None:
        """Create the error (its message names the file or endpoint, never key material)."""
        super().__init__(detail, reason="identity_unavailable")


@dataclass(frozen=True, slots=True)
class ServingSvid:
    """The broker's own X.509-SVID: leaf first, then intermediates, and its private key."""

    spiffe_id: str
    chain: tuple[x509.Certificate, ...]
    private_key: CertificateIssuerPrivateKeyTypes = field(repr=False, compare=False)

    @property
    def leaf(self) -> x509.Certificate:
        """The leaf certificate."""
        return self.chain[0]

    @property
    def not_after(self) -> datetime:
        """When the leaf expires."""
        return self.leaf.not_valid_after_utc

    def chain_pem(self) -> bytes:
        """The certificate chain as PEM."""
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.chain)

    def key_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM. Handle as a secret."""
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


@dataclass(frozen=True, slots=True)
class TrustBundle:
    """The X.509 and JWT authorities of one trust domain."""

    trust_domain: str
    x509_authorities: tuple[x509.Certificate, ...] = ()
    jwt_authorities: Mapping[str, PublicKey] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Freeze the JWT authorities mapping."""
        object.__setattr__(self, "jwt_authorities", MappingProxyType(dict(self.jwt_authorities)))


@dataclass(frozen=True, slots=True)
class IdentitySnapshot:
    """The broker's SVID plus every trust bundle it accepts, at one instant."""

    svid: ServingSvid
    bundles: Mapping[str, TrustBundle]
    fingerprint: str

    def bundle(self, trust_domain: str) -> TrustBundle | None:
        """The bundle of a trust domain, if we hold one."""
        return self.bundles.get(trust_domain)


def build_snapshot(
    *,
    chain: list[x509.Certificate],
    private_key: object,
    bundles: Mapping[str, TrustBundle],
    expected_spiffe_id: str,
    trust_domain: str,
    accepted_domains: frozenset[str],
) -> IdentitySnapshot:
    """Validate identity material and freeze it into a snapshot.

    Args:
        chain: The broker's SVID chain, leaf first.
        private_key: The SVID's private key.
        bundles: Trust bundles by trust domain name (may include domains we do not accept;
            those are dropped).
        expected_spiffe_id: The broker's configured SPIFFE ID; the SVID must carry it.
        trust_domain: Our trust domain; its bundle must be present and non-empty.
        accepted_domains: Our trust domain and the configured federated ones.

    Returns:
        The snapshot.

    Raises:
        IdentityError: The material is unusable; the message says why.
    """
    if not chain:
        raise IdentityError("the SVID certificate chain is empty")
    if not isinstance(
        private_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise IdentityError("the SVID private key is not an EC, RSA or Ed25519 key")
    leaf = chain[0]
    spiffe_id = spiffe_id_of(leaf)
    if spiffe_id is None:
        raise IdentityError("the SVID does not carry exactly one SPIFFE ID URI SAN")
    try:
        parse_spiffe_id(spiffe_id)
    except ValueError as exc:
        raise IdentityError(f"the SVID's SPIFFE ID is invalid: {exc}") from None
    if spiffe_id != expected_spiffe_id:
        raise IdentityError(
            f"the SVID is for {spiffe_id}, but the broker is configured as {expected_spiffe_id}"
        )
    if _public_der(leaf.public_key()) != _public_der(private_key.public_key()):
        raise IdentityError("the SVID private key does not match its certificate")
    own = bundles.get(trust_domain)
    if own is None or not own.x509_authorities:
        raise IdentityError(f"no X.509 bundle for our trust domain {trust_domain!r}")
    kept = {td: b for td, b in bundles.items() if td in accepted_domains}
    return IdentitySnapshot(
        svid=ServingSvid(spiffe_id, tuple(chain), private_key),
        bundles=MappingProxyType(kept),
        fingerprint=_fingerprint(chain, kept),
    )


def _fingerprint(chain: list[x509.Certificate], bundles: Mapping[str, TrustBundle]) -> str:
    """A content hash of the material, to tell a real rotation from a repeated update."""
    digest = hashlib.sha256()
    for cert in chain:
        digest.update(cert.public_bytes(serialization.Encoding.DER))
    for td in sorted(bundles):
        digest.update(td.encode())
        for cert in bundles[td].x509_authorities:
            digest.update(cert.public_bytes(serialization.Encoding.DER))
        for kid in sorted(bundles[td].jwt_authorities):
            digest.update(kid.encode())
            digest.update(_public_der(bundles[td].jwt_authorities[kid]))
    return digest.hexdigest()


def _public_der(key: object) -> bytes:
    public_bytes = getattr(key, "public_bytes", None)
    if public_bytes is None:
        return b""
    der: bytes = public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der
