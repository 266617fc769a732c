"""Turns what a request presented (client chain, bearer, forwarded certificate) into a `Caller`.

Rules, in order:
1. A client certificate presented over TLS is verified as an X.509-SVID.
2. If that caller is a configured trusted proxy and the request carries the forwarded
   client certificate header (Envoy's `x-forwarded-client-cert`), the forwarded chain is
   verified instead and the proxy is recorded. From anyone else the header is ignored.
3. A bearer is verified as a JWT-SVID.
4. Both present: they must name the same SPIFFE ID (otherwise 401); the mTLS identity wins
   (it binds credentials to the certificate, RFC 8705).
Any presented credential that fails fails the request: nothing falls back to a weaker one.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from urllib.parse import unquote

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from broker.authn.jwt_svid import JwtSvidVerifier
from broker.authn.x509 import X509SvidVerifier
from broker.clock import SystemClock
from broker.domain import Caller
from broker.errors import Unauthenticated
from broker.identity.material import spiffe_id_of
from broker.jose import JoseError, unverified_claims
from broker.typing import Clock
from broker.verified import VerifiedCache

__all__ = ["Presented", "SvidAuthenticator", "parse_xfcc", "presented_identity"]

_MAX_XFCC_BYTES = 32 * 1024
_MAX_CLAIMED_SEGMENT = 16 * 1024


@dataclass(frozen=True, slots=True)
class Presented:
    """The identity material a request carried.

    Attributes:
        peer_chain: The TLS client certificate chain (DER, leaf first); empty if none.
        authorization: The raw `Authorization` header, if any.
        forwarded_client_cert: The raw forwarded-client-certificate header, if any.
    """

    peer_chain: tuple[bytes, ...] = ()
    authorization: str | None = None
    forwarded_client_cert: str | None = None

    @property
    def anything(self) -> bool:
        """Whether the request presented any identity at all."""
        return bool(self.peer_chain or self.authorization)


class SvidAuthenticator:
    """The `Authenticator`: agents by X.509-SVID (mTLS, or via a trusted proxy) or JWT-SVID."""

    def __init__(
        self,
        x509_verifier: X509SvidVerifier,
        jwt_verifier: JwtSvidVerifier,
        trusted_proxies: frozenset[str] = frozenset(),
        *,
        clock: Clock | None = None,
        cache: VerifiedCache[Caller] | None = None,
    ) -> None:
        """Create the authenticator.

        Args:
            x509_verifier: Verifies X.509-SVID chains.
            jwt_verifier: Verifies JWT-SVIDs.
            trusted_proxies: SPIFFE IDs whose forwarded client certificates are believed.
            clock: For the cache's expiries (the system clock by default).
            cache: Successful verifications, reused until the SVID expires or the trust
                bundles change (see `broker.verified`); the caller clears it on rotation.
        """
        self._x509 = x509_verifier
        self._jwt = jwt_verifier
        self._proxies = trusted_proxies
        self._clock = clock or SystemClock()
        self.cache: VerifiedCache[Caller] = cache or VerifiedCache()
        self.verifications = 0  # full verifications run (the hot-path regression test reads it)

    def verify_jwt_svid(self, token: str) -> Caller:
        """Verify a JWT-SVID on its own (an exchange's `actor_token`).

        Raises:
            Unauthenticated: It does not verify.
        """
        return self._jwt.verify(token)

    def authenticate(self, presented: Presented) -> Caller:
        """Authenticate a request.

        Raises:
            Unauthenticated: Nothing presented (`presented=False`), or something that
                does not verify.
        """
        now = self._clock.time()
        tls_caller = self._x509_cached(presented.peer_chain, now) if presented.peer_chain else None
        if (
            tls_caller is not None
            and tls_caller.spiffe_id in self._proxies
            and presented.forwarded_client_cert
        ):
            tls_caller = self._forwarded(presented.forwarded_client_cert, tls_caller.spiffe_id)

        bearer = _bearer(presented.authorization)
        bearer_caller = self._jwt_cached(bearer, now) if bearer is not None else None

        if tls_caller is not None and bearer_caller is not None:
            if tls_caller.spiffe_id != bearer_caller.spiffe_id:
                raise Unauthenticated(
                    f"the mTLS client certificate ({tls_caller.spiffe_id}) and the bearer "
                    f"JWT-SVID ({bearer_caller.spiffe_id}) name different SPIFFE IDs"
                )
            return dataclasses.replace(
                tls_caller,
                jwt_svid_jti=bearer_caller.jwt_svid_jti,
                expires_at=min(tls_caller.expires_at, bearer_caller.expires_at),
            )
        if tls_caller is not None:
            return tls_caller
        if bearer_caller is not None:
            return bearer_caller
        raise Unauthenticated(
            "no SVID presented: authenticate with an X.509-SVID client certificate (mTLS) "
            "or a JWT-SVID in 'Authorization: Bearer'",
            presented=False,
        )

    def _x509_cached(self, chain: tuple[bytes, ...], now: float) -> Caller:
        key = b"x509:" + hashlib.sha256(chain[0]).digest()
        caller = self.cache.get(key, now)
        if caller is None:
            self.verifications += 1
            caller = self._x509.verify(chain)
            self.cache.put(key, caller, expires_at=caller.expires_at.timestamp(), now=now)
        return caller

    def _jwt_cached(self, token: str, now: float) -> Caller:
        key = b"jwt:" + hashlib.sha256(token.encode()).digest()
        caller = self.cache.get(key, now)
        if caller is None:
            self.verifications += 1
            caller = self._jwt.verify(token)
            self.cache.put(key, caller, expires_at=caller.expires_at.timestamp(), now=now)
        return caller

    def _forwarded(self, header: str, proxy: str) -> Caller:
        if len(header) > _MAX_XFCC_BYTES:
            raise Unauthenticated("forwarded client certificate header is too large")
        elements = parse_xfcc(header)
        if not elements:
            raise Unauthenticated("forwarded client certificate header is malformed")
        # Envoy appends the proxy's own downstream client last.
        element = elements[-1]
        pem = element.get("chain") or element.get("cert")
        if not pem:
            raise Unauthenticated("forwarded client certificate header carries no certificate")
        try:
            certs = x509.load_pem_x509_certificates(unquote(pem).encode())
        except ValueError:
            raise Unauthenticated("forwarded client certificate is not valid PEM") from None
        chain = tuple(c.public_bytes(serialization.Encoding.DER) for c in certs)
        caller = self._x509.verify(chain)
        return dataclasses.replace(caller, via_proxy=proxy)


def _bearer(authorization: str | None) -> str | None:
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("the Authorization header must be 'Bearer <JWT-SVID>'")
    return token.strip()


_XFCC_PAIR = re.compile(r'\s*([A-Za-z]+)=("[^"]*"|[^;,"]*)\s*([;,]|$)')


def parse_xfcc(header: str) -> list[dict[str, str]]:
    """Parse an `x-forwarded-client-cert` header into its elements (keys lower-cased).

    Elements are separated by `,`, pairs by `;`; a value may be double-quoted to contain
    those separators. Anything else makes the whole header malformed (empty result).
    """
    elements: list[dict[str, str]] = []
    current: dict[str, str] = {}
    position = 0
    while position < len(header):
        match = _XFCC_PAIR.match(header, position)
        if match is None:
            return []
        key, value, separator = match.groups()
        current[key.lower()] = value[1:-1] if value.startswith('"') else value
        position = match.end()
        if separator != ";":
            elements.append(current)
            current = {}
    return elements


def _claimed(token: str) -> dict[str, object]:
    """The claims a token states, read leniently: for attributing a failure, never trusted.

    The strict parser refuses what verification must refuse (NaN dates, duplicate
    members); a token refused for that still names who it claims to be, and that failure
    is audited under that name. Only a token whose payload is not JSON at all claims
    nobody (such failures are audited in aggregate).
    """
    try:
        return unverified_claims(token)
    except JoseError:
        pass
    parts = token.split(".")
    if len(parts) != 3 or len(parts[1]) > _MAX_CLAIMED_SEGMENT:  # noqa: PLR2004 - compact JWS
        return {}
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error, RecursionError):
        return {}
    return payload if isinstance(payload, dict) else {}


def presented_identity(presented: Presented) -> tuple[str | None, str | None, str | None]:
    """What identity a request *claimed* (unverified), for the audit of a failure.

    Returns:
        (claimed SPIFFE ID, leaf SHA-256 hex, JWT-SVID jti); never the token itself.
    """
    spiffe_id = thumbprint = jti = None
    if presented.peer_chain:
        thumbprint = hashlib.sha256(presented.peer_chain[0]).hexdigest()
        try:
            spiffe_id = spiffe_id_of(x509.load_der_x509_certificate(presented.peer_chain[0]))
        except ValueError:
            spiffe_id = None
    if presented.authorization:
        _, _, token = presented.authorization.strip().partition(" ")
        claims = _claimed(token.strip())
        sub, raw_jti = claims.get("sub"), claims.get("jti")
        spiffe_id = spiffe_id or (sub[:256] if isinstance(sub, str) else None)
        jti = raw_jti[:128] if isinstance(raw_jti, str) else None
    return spiffe_id, thumbprint, jti
