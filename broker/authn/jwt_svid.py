"""JWT-SVID verification of a bearer token (SPIFFE JWT-SVID specification).

The key is chosen only from the JWT bundle of the `sub`'s trust domain; nothing in the
token can make the broker fetch or trust other key material (`jku`, `x5u`, `jwk`, `x5c`
and `crit` are refused outright). The token is parsed once (`broker.jose.parse_jwt`).

A JWT-SVID must carry `iat`, and `exp - iat` must not exceed `max_lifetime_seconds`:
a bearer that lives long is a bearer that leaks long. SPIRE always sets `iat`, so a token
without it is refused rather than given the benefit of the doubt.
"""

from __future__ import annotations

from datetime import UTC, datetime

from broker.authn.config import JwtSvidSettings
from broker.domain import AuthMethod, Caller
from broker.errors import Unauthenticated
from broker.identity.material import IdentityError
from broker.jose import (
    JoseError,
    check_audience,
    check_time_claims,
    parse_jwt,
    verify_with_keys,
)
from broker.spiffe_id import parse_spiffe_id, trust_domain_of
from broker.typing import Clock, IdentitySource

__all__ = ["JwtSvidVerifier"]

_TYPES = ("JWT", "JOSE")


class JwtSvidVerifier:
    """Verifies JWT-SVIDs presented as `Authorization: Bearer`."""

    def __init__(
        self,
        source: IdentitySource,
        settings: JwtSvidSettings,
        trusted_domains: frozenset[str],
        clock: Clock,
    ) -> None:
        """Create the verifier.

        Args:
            source: Supplies the current JWT bundles.
            settings: Audience, algorithm allow-list and leeway.
            trusted_domains: Our trust domain and the federated ones.
            clock: The time against which `exp`, `nbf` and `iat` are checked.
        """
        self._source = source
        self._settings = settings
        self._trusted = trusted_domains
        self._clock = clock

    def verify(self, token: str) -> Caller:
        """Verify a JWT-SVID and return the caller.

        Raises:
            Unauthenticated: With the precise reason.
        """
        if len(token) > self._settings.max_token_bytes:
            raise Unauthenticated("bearer JWT-SVID is too large")
        try:
            return self._verify(token)
        except JoseError as exc:
            raise Unauthenticated(f"bearer JWT-SVID rejected: {exc}") from None

    def _verify(self, token: str) -> Caller:
        parsed = parse_jwt(
            token, allowed_algorithms=self._settings.algorithms, allowed_types=_TYPES
        )
        sub = parsed.claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise JoseError("JWT-SVID has no 'sub' claim")
        try:
            spiffe_id = str(parse_spiffe_id(sub))
        except ValueError as exc:
            raise JoseError(f"'sub' {exc}") from None
        trust_domain = trust_domain_of(spiffe_id)
        if trust_domain not in self._trusted:
            raise JoseError(f"trust domain {trust_domain!r} of {spiffe_id} is not trusted")
        try:
            bundle = self._source.snapshot().bundle(trust_domain)
        except IdentityError:
            bundle = None
        if bundle is None or not bundle.jwt_authorities:
            raise JoseError(f"no JWT bundle is held for trust domain {trust_domain!r}")

        # The claims read above are the ones the signature covers: one parse, one object.
        verified = verify_with_keys(
            parsed,
            parsed.kid,
            parsed.alg,
            bundle.jwt_authorities,
            where=f"the JWT bundle of trust domain {trust_domain!r}",
        )
        check_audience(verified, self._settings.audience)
        exp = check_time_claims(
            verified, now=self._clock.time(), leeway=self._settings.leeway_seconds
        )
        self._check_lifetime(verified, exp)
        jti = verified.get("jti")
        return Caller(
            spiffe_id=spiffe_id,
            trust_domain=trust_domain,
            method=AuthMethod.JWT_SVID,
            expires_at=datetime.fromtimestamp(float(exp or 0), UTC),
            jwt_svid_jti=jti if isinstance(jti, str) and jti else None,
        )

    def _check_lifetime(self, claims: dict[str, object], exp: float | None) -> None:
        """`exp - iat` within the configured maximum (both already checked NumericDates)."""
        iat = claims.get("iat")
        if not isinstance(iat, int | float) or exp is None:
            raise JoseError("JWT-SVID has no 'iat' claim, so its lifetime cannot be bounded")
        lifetime = exp - iat
        maximum = self._settings.max_lifetime_seconds
        if lifetime > maximum:
            raise JoseError(
                f"JWT-SVID lifetime (exp - iat) of {lifetime:.10g} s is over the maximum of "
                f"{maximum} s (authentication.jwt_svid.max_lifetime_seconds)"
            )
