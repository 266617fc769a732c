"""X.509 and key generation for the development trust domain (and the tests' crafted SVIDs).

Certificates follow the SPIFFE X509-SVID profile by default: CA with `cA=true`,
`keyCertSign`/`cRLSign` (critical) and a root SPIFFE ID; leaves with exactly one SPIFFE ID
URI SAN, `cA=false`, `digitalSignature` (critical) and both TLS EKUs. Every rule can be
overridden, which the test suite uses to craft SVIDs that break one rule each.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "LEAF_KEY_USAGE",
    "TLS_EKUS",
    "cert_pem",
    "issue_ca",
    "issue_leaf",
    "key_pem",
    "key_usage",
    "new_ec_key",
    "new_ed25519_key",
]

TLS_EKUS = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)


def key_usage(
    *,
    digital_signature: bool = False,
    key_encipherment: bool = False,
    key_agreement: bool = False,
    key_cert_sign: bool = False,
    crl_sign: bool = False,
) -> x509.KeyUsage:
    """A keyUsage value with the named bits set."""
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=key_agreement,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


LEAF_KEY_USAGE = key_usage(digital_signature=True)
CA_KEY_USAGE = key_usage(key_cert_sign=True, crl_sign=True)


def new_ec_key() -> ec.EllipticCurvePrivateKey:
    """A fresh P-256 key."""
    return ec.generate_private_key(ec.SECP256R1())


def new_ed25519_key() -> ed25519.Ed25519PrivateKey:
    """A fresh Ed25519 key."""
    return ed25519.Ed25519PrivateKey.generate()


def _name(*parts: tuple[x509.ObjectIdentifier, str]) -> x509.Name:
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in parts])


def issue_ca(
    trust_domain: str,
    key: CertificateIssuerPrivateKeyTypes,
    *,
    not_before: datetime,
    not_after: datetime,
    parent: tuple[x509.Certificate, CertificateIssuerPrivateKeyTypes] | None = None,
    common_name: str | None = None,
) -> x509.Certificate:
    """Issue a SPIFFE signing (CA) certificate, self-signed unless `parent` is given."""
    subject = _name(
        (NameOID.ORGANIZATION_NAME, "SPIFFE"),
        (NameOID.COMMON_NAME, common_name or f"{trust_domain} development CA"),
    )
    issuer_cert, issuer_key = parent or (None, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(CA_KEY_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]
            ),
            critical=False,
        )
    )
    if issuer_cert is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    return builder.sign(issuer_key, _hash_for(issuer_key))


def issue_leaf(
    *,
    issuer: tuple[x509.Certificate, CertificateIssuerPrivateKeyTypes],
    public_key: CertificatePublicKeyTypes,
    uris: Sequence[str],
    not_before: datetime,
    not_after: datetime,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    is_ca: bool = False,
    usage: x509.KeyUsage | None = LEAF_KEY_USAGE,
    usage_critical: bool = True,
    extended_usage: Sequence[x509.ObjectIdentifier] | None = TLS_EKUS,
    subject: x509.Name | None = None,
    san_critical: bool = False,
) -> x509.Certificate:
    """Issue a leaf certificate: an X.509-SVID by default, anything else by override."""
    issuer_cert, issuer_key = issuer
    if subject is None:
        subject = _name((NameOID.ORGANIZATION_NAME, "SPIRE"), (NameOID.COUNTRY_NAME, "US"))
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    names += [x509.DNSName(d) for d in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ip_addresses]
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=san_critical)
    if usage is not None:
        builder = builder.add_extension(usage, critical=usage_critical)
    if extended_usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(extended_usage)), critical=False)
    return builder.sign(issuer_key, _hash_for(issuer_key))


def _hash_for(key: CertificateIssuerPrivateKeyTypes) -> hashes.SHA256 | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def cert_pem(*certs: x509.Certificate) -> bytes:
    """PEM of one or more certificates."""
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def key_pem(key: CertificateIssuerPrivateKeyTypes) -> bytes:
    """Unencrypted PKCS#8 PEM of a private key (a secret: write it 0600)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def default_validity(now: datetime, days: int) -> tuple[datetime, datetime]:
    """A validity window starting a minute in the past (clock skew) and lasting `days`."""
    return now - timedelta(minutes=1), now + timedelta(days=days)
