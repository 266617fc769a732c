"""Credentials of `type: jwt` tools: RFC 9068 access tokens the broker signs itself."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from broker.constants import ISSUER_ALGORITHMS
from broker.domain import Credential, Secret
from broker.issuers.base import IssueRequest, act_claim
from broker.issuers.jwt.keys import KeyRing
from broker.issuers.jwt.signer import encoded_header, sign_compact
from broker.jose import JoseError, check_time_claims, decode_verified, parse_jwt
from broker.typing import Clock

__all__ = ["JwtIssuer"]

TOKEN_TYPE = "at+jwt"  # noqa: S105 - the RFC 9068 `typ`, not a password


class JwtIssuer:
    """Mints short-lived JWTs bound to the agent, the user and the tool.

    Implements `Issuer` and `TokenVerifier` (it verifies what it minted).
    """

    kind = "jwt"

    def __init__(self, issuer: str, keys: KeyRing, clock: Clock) -> None:
        """Create the issuer.

        Args:
            issuer: The `iss` claim.
            keys: The signing keys.
            clock: For `iat`/`nbf`/`exp`.
        """
        self._issuer = issuer
        self._keys = keys
        self._clock = clock

    @property
    def issuer(self) -> str:
        """The `iss` claim."""
        return self._issuer

    def sign(self, claims: dict[str, object], typ: str) -> str:
        """Sign other claims (a webhook's) with the current key: verifiable with the JWKS."""
        key = self._keys.signing_key()
        return sign_compact(
            encoded_header(key.alg, key.kid, typ), {"iss": self._issuer, **claims}, key.private_key
        )

    @property
    def algorithms(self) -> tuple[str, ...]:
        """The algorithms of the published keys."""
        return tuple(dict.fromkeys(k.alg for k in self._keys.published()))

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The public keys: upcoming, current and recently retired."""
        return self._keys.jwks()

    def audit_id(self, credential_id: str) -> str:
        """A token's `jti` is not a secret: the audit trail records it as is."""
        return credential_id

    def claims(self, request: IssueRequest, *, jti: str, now: int) -> dict[str, object]:
        """The claims of the token for `request` (contract section 3)."""
        ctx = request.ctx
        claims: dict[str, object] = {
            "iss": self._issuer,
            "sub": ctx.user.subject if ctx.user is not None else ctx.caller.spiffe_id,
            "aud": request.tool.audience,
            "act": act_claim(ctx),
            "client_id": ctx.caller.spiffe_id,
            "scope": " ".join(request.grant.scopes),
            "tool": request.tool.name,
            "iat": now,
            "nbf": now,
            "exp": now + request.ttl,
            "jti": jti,
        }
        thumbprint = ctx.caller.x5t_s256
        if thumbprint is not None:
            claims["cnf"] = {"x5t#S256": thumbprint}
        return claims

    async def issue(self, request: IssueRequest) -> Credential:
        """Sign one token (CPU only: tens of microseconds, fine on the event loop)."""
        now = int(self._clock.time())
        jti = secrets.token_urlsafe(18)
        key = self._keys.signing_key()
        token = sign_compact(
            encoded_header(key.alg, key.kid, TOKEN_TYPE),
            self.claims(request, jti=jti, now=now),
            key.private_key,
        )
        return Credential(
            tool=request.tool.name,
            type=self.kind,
            credential_id=jti,
            expires_at=datetime.fromtimestamp(now + request.ttl, UTC),
            secret=Secret(token),
            audit_id=jti,
        )

    def verify(self, token: str) -> dict[str, object] | None:
        """The claims of a token this broker issued and that is still valid, else None.

        Checks the header (`at+jwt`, an issuer algorithm, a published `kid`), the
        signature, `iss` and the validity window (no leeway: it is our own clock).
        Revocation is the state store's business, not this method's.
        """
        try:
            parsed = parse_jwt(
                token, allowed_algorithms=ISSUER_ALGORITHMS, allowed_types=(TOKEN_TYPE,)
            )
            kid = parsed.header.get("kid")
            key = self._keys.verification_key(kid) if isinstance(kid, str) else None
            if key is None:
                return None
            claims = decode_verified(parsed, key.private_key.public_key(), parsed.alg)
            check_time_claims(claims, now=self._clock.time(), leeway=0)
        except JoseError:
            return None
        if claims.get("iss") != self._issuer or not isinstance(claims.get("jti"), str):
            return None
        return claims

    async def revoke(self, credential_id: str) -> None:
        """Nothing to undo at the issuer: revocation lives in the state store."""
        del credential_id
