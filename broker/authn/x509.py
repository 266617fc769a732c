"""X.509-SVID verification of a presented client certificate chain.

Implements the SPIFFE X509-SVID specification in full (section 5: RFC 5280 path
validation plus the leaf rules), with the chain checked only against the bundle of the
SVID's own trust domain, so a federated domain can never vouch for ours or another's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from broker.domain import AuthMethod, Caller
from broker.errors import Unauthenticated
from broker.identity.material import IdentityError, TrustBundle
from broker.spiffe_id import parse_spiffe_id, trust_domain_of
from broker.typing import Clock, IdentitySource

__all__ = ["X509SvidVerifier", "check_leaf"]

MAX_CHAIN_LENGTH = 8
_TLS_EKUS = frozenset({ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH})


def check_leaf(leaf: x509.Certificate) -> str:
    """Apply the X509-SVID leaf rules and return the SPIFFE ID.

    Raises:
        Unauthenticated: With the rule that failed.
    """
    try:
        spiffe_id = _spiffe_id(leaf)
        _check_not_ca(leaf)
        _check_key_usage(leaf)
        _check_extended_key_usage(leaf)
    except ValueError:  # cryptography's lazy extension parsing
        raise Unauthenticated("client certificate has malformed extensions") from None
    return spiffe_id


def _spiffe_id(leaf: x509.Certificate) -> str:
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        raise Unauthenticated(
            "client certificate has no subjectAltName: an X509-SVID carries exactly one "
            "SPIFFE ID URI SAN"
        ) from None
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise Unauthenticated(
            f"client certificate has {len(uris)} URI SANs: an X509-SVID carries exactly one"
        )
    if not uris[0].lower().startswith("spiffe://"):
        raise Unauthenticated("client certificate URI SAN is not a SPIFFE ID (scheme 'spiffe')")
    try:
        spiffe_id = str(parse_spiffe_id(uris[0]))
    except ValueError as exc:
        raise Unauthenticated(f"client certificate URI SAN: {exc}") from None
    if len(leaf.subject) == 0 and not san.critical:
        raise Unauthenticated(
            "client certificate has an empty subject, so its URI SAN must be marked critical"
        )
    return spiffe_id


def _check_not_ca(leaf: x509.Certificate) -> None:
    try:
        basic = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return  # cA defaults to false (RFC 5280 section 4.2.1.9)
    if basic.ca:
        raise Unauthenticated(
            "client certificate is a CA certificate (basicConstraints cA=true); "
            "an X509-SVID leaf must not be"
        )


def _check_key_usage(leaf: x509.Certificate) -> None:
    try:
        extension = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    except x509.ExtensionNotFound:
        raise Unauthenticated("client certificate has no keyUsage extension") from None
    if not extension.critical:
        raise Unauthenticated("client certificate keyUsage extension must be marked critical")
    usage = extension.value
    if not usage.digital_signature:
        raise Unauthenticated("client certificate keyUsage lacks digitalSignature")
    if usage.key_cert_sign:
        raise Unauthenticated("client certificate keyUsage has keyCertSign: not a leaf SVID")
    if usage.crl_sign:
        raise Unauthenticated("client certificate keyUsage has cRLSign: not a leaf SVID")


def _check_extended_key_usage(leaf: x509.Certificate) -> None:
    try:
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return  # optional (SHOULD), but when present it must carry both
    if not _TLS_EKUS.issubset(set(eku)):
        raise Unauthenticated(
            "client certificate extendedKeyUsage must include both serverAuth and clientAuth"
        )


class X509SvidVerifier:
    """Verifies presented X.509-SVID chains against the trust bundles of the identity source."""

    def __init__(
        self, source: IdentitySource, trusted_domains: frozenset[str], clock: Clock
    ) -> None:
        """Create the verifier.

        Args:
            source: Supplies the current trust bundles.
            trusted_domains: Our trust domain and the federated ones.
            clock: The time against which validity is checked.
        """
        self._source = source
        self._trusted = trusted_domains
        self._clock = clock
        self._stores: dict[tuple[str, str], Store] = {}

    def _store(self, fingerprint: str, bundle: TrustBundle) -> Store:
        # Keyed by the snapshot's content hash: a rotated bundle never reuses a stale store.
        key = (fingerprint, bundle.trust_domain)
        store = self._stores.get(key)
        if store is None:
            if len(self._stores) > 64:  # noqa: PLR2004 - old snapshots' stores
                self._stores.clear()
            store = Store(list(bundle.x509_authorities))
            self._stores[key] = store
        return store

    def verify(self, chain_der: Sequence[bytes]) -> Caller:
        """Verify a chain (DER, leaf first) and return the caller.

        Raises:
            Unauthenticated: With the precise reason.
        """
        if not chain_der:
            raise Unauthenticated("no client certificate was presented", presented=False)
        if len(chain_der) > MAX_CHAIN_LENGTH:
            raise Unauthenticated(f"client certificate chain is longer than {MAX_CHAIN_LENGTH}")
        try:
            certs = [x509.load_der_x509_certificate(der) for der in chain_der]
        except ValueError:
            raise Unauthenticated("client certificate chain could not be parsed") from None
        leaf = certs[0]
        spiffe_id = check_leaf(leaf)
        trust_domain = trust_domain_of(spiffe_id)
        if trust_domain not in self._trusted:
            raise Unauthenticated(f"trust domain {trust_domain!r} of {spiffe_id} is not trusted")

        now = self._clock.now()
        if now < leaf.not_valid_before_utc:
            raise Unauthenticated(f"client certificate of {spiffe_id} is not valid yet")
        if now >= leaf.not_valid_after_utc:
            raise Unauthenticated(
                f"client certificate of {spiffe_id} expired at "
                f"{leaf.not_valid_after_utc.isoformat()}"
            )
        try:
            snapshot = self._source.snapshot()
        except IdentityError:
            raise Unauthenticated("the broker holds no trust bundle yet") from None
        bundle = snapshot.bundle(trust_domain)
        if bundle is None or not bundle.x509_authorities:
            raise Unauthenticated(f"no X.509 bundle is held for trust domain {trust_domain!r}")
        verifier = (
            PolicyBuilder()
            .store(self._store(snapshot.fingerprint, bundle))
            .time(now)
            .max_chain_depth(MAX_CHAIN_LENGTH)
            .extension_policies(
                ca_policy=ExtensionPolicy.webpki_defaults_ca(),
                # The leaf rules are checked above, with precise messages.
                ee_policy=ExtensionPolicy.permit_all(),
            )
            .build_client_verifier()
        )
        try:
            verifier.verify(leaf, certs[1:])
        except VerificationError:
            raise Unauthenticated(
                f"certificate chain of {spiffe_id} does not verify against the X.509 bundle "
                f"of trust domain {trust_domain!r}"
            ) from None
        return Caller(
            spiffe_id=spiffe_id,
            trust_domain=trust_domain,
            method=AuthMethod.X509_SVID,
            # The chain is only as good as its first certificate to expire.
            expires_at=min(c.not_valid_after_utc for c in certs),
            x509_sha256=hashlib.sha256(chain_der[0]).hexdigest(),
        )
