"""Verifying the broker credential an agent presents to the gateway, on every request.

The signature, `iss`, `exp` and `nbf` are checked by the runtime's own `TokenVerifier` (the
broker's keys: no network hop); a success is remembered by the token's digest until the
token expires (bounded, oldest first) in a `VerifiedCache`, as for SVIDs. What is
never cached: the `aud` of the route, revocation (the shared state store, read on every
request, so a revocation on any replica is refused from the next request on), and the
`cnf` binding to the TLS client certificate of this connection.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from broker.domain import UserRef
from broker.errors import Unauthenticated
from broker.typing import StateStore, TokenVerifier
from broker.verified import VerifiedCache

__all__ = ["GatewayCaller", "GatewayVerifier"]

# Broker credentials live five minutes; an entry never outlives its token's `exp` anyway.
_MAX_AGE_SECONDS = 3600.0


@dataclass(frozen=True, slots=True)
class GatewayCaller:
    """Who is calling through the gateway, from a verified broker credential.

    Attributes:
        agent: The owner agent's SPIFFE ID.
        user: The user it acts for, if any.
        delegation_chain: Outermost principal first, the acting agent last.
        credential_id: The token's `jti`.
        audience: The token's `aud`.
    """

    agent: str
    user: UserRef | None
    delegation_chain: tuple[str, ...]
    credential_id: str
    audience: tuple[str, ...]


class GatewayRefused(Unauthenticated):
    """The credential is missing, invalid, expired, revoked, for another audience or unbound."""

    def __init__(self, reason: str, detail: str) -> None:
        """Create the refusal with its audit reason."""
        super().__init__(detail, extra={"reasons": [reason]})
        self.reason = reason


class GatewayVerifier:
    """Verifies broker credentials for the gateway; caches signatures, never revocation."""

    def __init__(
        self, tokens: TokenVerifier | None, state: StateStore, *, max_entries: int = 10_000
    ) -> None:
        """Wire the runtime's token verifier and the shared state store."""
        self._tokens = tokens
        self._state = state
        self._verified: VerifiedCache[Mapping[str, object]] = VerifiedCache(
            max_entries=max_entries, max_age=_MAX_AGE_SECONDS
        )

    def _claims(self, token: str, now: float) -> Mapping[str, object] | None:
        digest = hashlib.sha256(token.encode()).digest()
        cached = self._verified.get(digest, now)
        if cached is not None:
            return cached
        claims = self._tokens.verify(token) if self._tokens is not None else None
        if claims is None:
            return None
        exp = claims.get("exp")
        if isinstance(exp, int | float):
            self._verified.put(digest, claims, expires_at=float(exp), now=now)
        return claims

    async def verify(
        self, token: str | None, audience: str, peer_der: bytes | None, now: float
    ) -> GatewayCaller:
        """The caller, if `token` is a live broker credential for `audience` bound to this peer.

        Raises:
            GatewayRefused: 401, with the reason.
            Unavailable: The state store cannot say whether it was revoked.
        """
        if not token:
            raise GatewayRefused("missing_token", "a broker credential is required")
        claims = self._claims(token, now)
        if claims is None:
            raise GatewayRefused("invalid_token", "the credential is invalid or expired")
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or now >= exp:
            raise GatewayRefused("invalid_token", "the credential is invalid or expired")
        aud = claims.get("aud")
        audiences = (aud,) if isinstance(aud, str) else tuple(str(a) for a in aud or ())  # type: ignore[attr-defined]
        if audience not in audiences:
            raise GatewayRefused("wrong_audience", "the credential is not for this route")
        cnf = claims.get("cnf")
        if isinstance(cnf, Mapping) and "x5t#S256" in cnf:
            thumbprint = (
                base64.urlsafe_b64encode(hashlib.sha256(peer_der).digest()).rstrip(b"=").decode()
                if peer_der
                else None
            )
            if thumbprint != cnf["x5t#S256"]:
                raise GatewayRefused(
                    "cnf_mismatch", "the credential is bound to another client certificate"
                )
        jti = str(claims.get("jti"))
        record = await self._state.get_credential(jti)
        if record is None or record.revoked:
            raise GatewayRefused("revoked", "the credential is revoked or unknown")
        if await self._state.agent_revoked(record.agent):
            raise GatewayRefused("agent_revoked", "the agent is revoked")
        return GatewayCaller(
            agent=record.agent,
            user=record.user,
            delegation_chain=_chain(claims, record.agent),
            credential_id=jti,
            audience=audiences,
        )


def _chain(claims: Mapping[str, object], agent: str) -> tuple[str, ...]:
    """Outermost principal first: the user (`sub`), earlier actors, the acting agent."""
    actors: list[str] = []
    act = claims.get("act")
    while isinstance(act, Mapping) and isinstance(act.get("sub"), str):
        actors.append(str(act["sub"]))
        act = act.get("act")
    chain = list(reversed(actors)) or [agent]
    sub = claims.get("sub")
    if isinstance(sub, str) and sub not in chain:
        chain.insert(0, sub)
    return tuple(chain)
