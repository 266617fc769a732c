"""Validation of the end user's token: the delegation context of a request (RFC 8693).

A token is accepted only from a configured issuer (`iss` matched exactly), signed with a
key from that issuer's key set using an allowed asymmetric algorithm, for the configured
audience, inside its validity window, and, when it carries an RFC 8693 `may_act` claim,
only by the agent that claim names. A failure is a policy denial (403) with a reason
code, except an unreachable key set, which is the broker's problem (503).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from broker.constants import MAX_TOKEN_BYTES
from broker.context.config import UserTokenIssuer
from broker.context.jwks import FileKeySet, UrlKeySet
from broker.domain import UserContext
from broker.errors import Unavailable
from broker.identity.material import IdentityError
from broker.jose import (
    JoseError,
    check_audience,
    check_time_claims,
    parse_jwt,
    verify_with_keys,
)
from broker.typing import Clock, KeySet
from broker.verified import VerifiedCache

__all__ = ["UserTokenRejected", "UserTokenVerifier", "actors_of", "check_may_act"]

MAX_ACT_DEPTH = 8
USER_TOKEN_TYPES = ("JWT", "at+jwt", "application/at+jwt")
_ANY_ASYMMETRIC = (
    "EdDSA",
    "ES256",
    "ES384",
    "ES512",
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
)


class UserTokenRejected(Exception):
    """The user token is not acceptable; `code` is the audited reason."""

    def __init__(self, code: str, message: str) -> None:
        """Create the rejection.

        Args:
            code: Reason code (`user_token_invalid`, `user_token_expired`,
                `user_token_wrong_audience`, `user_token_issuer_untrusted`,
                `actor_not_authorized`).
            message: Explanation fit for the caller (never the token).
        """
        super().__init__(message)
        self.code = code
        self.message = message


class UserTokenVerifier:
    """Validates user tokens against the configured issuers.

    Attributes:
        verifications: Signatures checked (a remembered token is not checked again).
    """

    def __init__(
        self,
        issuers: Sequence[UserTokenIssuer],
        clock: Clock,
        key_sets: Mapping[str, KeySet] | None = None,
    ) -> None:
        """Create the verifier.

        Args:
            issuers: The trusted user-token issuers.
            clock: For validity checks and cache ages.
            key_sets: Key sets by issuer (built from the settings when omitted).
        """
        self._issuers = {i.issuer: i for i in issuers}
        self._clock = clock
        self._accepted: VerifiedCache[_Accepted] = VerifiedCache()
        self.verifications = 0
        self._key_sets: dict[str, KeySet] = dict(key_sets or {})
        for issuer in issuers:
            if issuer.issuer not in self._key_sets:
                self._key_sets[issuer.issuer] = _key_set(issuer, clock)

    async def start(self) -> None:
        """Load every issuer's keys once (failures are retried on use)."""
        for key_set in self._key_sets.values():
            await key_set.start()

    async def close(self) -> None:
        """Release key-set resources."""
        for key_set in self._key_sets.values():
            await key_set.close()

    async def verify(self, token: str, *, actor: str | None = None) -> UserContext:
        """Validate a user token.

        Args:
            token: The user token.
            actor: The SPIFFE ID of the agent that would act for the user: refused when the
                token's `may_act` claim names someone else.

        Raises:
            UserTokenRejected: The token is not acceptable (a 403 with a reason).
            Unavailable: The issuer's keys cannot be obtained (503).
        """
        if not token or len(token) > MAX_TOKEN_BYTES:
            raise UserTokenRejected("user_token_invalid", "user token is empty or too large")
        now = self._clock.time()
        digest = hashlib.sha256(token.encode()).digest()
        remembered = await self._remembered(digest, now)
        if remembered is None:
            remembered = await self._verified(token, now)
            exp = remembered.claims.get("exp")
            if remembered.kid is not None and isinstance(exp, int | float):
                self._accepted.put(
                    digest,
                    remembered,
                    expires_at=float(exp) + remembered.config.leeway_seconds,
                    now=now,
                )
        else:
            _check_time(remembered.claims, remembered.config, now)
        if actor is not None:
            check_may_act(remembered.claims.get("may_act"), actor, what="user token")
        return remembered.user

    async def _remembered(self, digest: bytes, now: float) -> _Accepted | None:
        """A token accepted before, while the key that verified it is still its issuer's.

        A user's token rides along on every request of that user's session. What does
        not change for a given token (its signature, issuer, audience and user context)
        is remembered by the token's digest until it expires, and reused only while the
        key that verified it is still the issuer's key for its `kid` (a key set refresh or
        rotation forgets it; a token without `kid` is not remembered). Its time and
        `may_act` are checked on every request.
        """
        remembered = self._accepted.get(digest, now)
        if remembered is None:
            return None
        keys = await self._issuer_keys(remembered.config, remembered.kid)
        if remembered.kid is not None and keys.get(remembered.kid) is remembered.key:
            return remembered
        self._accepted.forget(digest)
        return None

    async def _verified(self, token: str, now: float) -> _Accepted:
        """Parse, route by issuer, verify the signature, then time, audience and claims."""
        try:
            parsed = parse_jwt(
                token, allowed_algorithms=_ANY_ASYMMETRIC, allowed_types=USER_TOKEN_TYPES
            )
        except JoseError as exc:
            raise UserTokenRejected("user_token_invalid", f"user token: {exc}") from None
        # Routing by the unverified `iss` is safe: the key then comes only from that
        # issuer's set, and the verified claims are this same parsed object.
        iss = parsed.claims.get("iss")
        config = self._issuers.get(iss) if isinstance(iss, str) else None
        if config is None:
            raise UserTokenRejected(
                "user_token_issuer_untrusted",
                f"user token issuer {iss!r} is not trusted"
                if isinstance(iss, str)
                else "user token has no 'iss' claim",
            )
        alg = parsed.alg
        if alg not in config.algorithms:
            raise UserTokenRejected(
                "user_token_invalid", f"user token algorithm {alg!r} is not allowed for {iss}"
            )
        kid = parsed.kid
        keys = await self._issuer_keys(config, kid)
        self.verifications += 1
        try:
            claims = verify_with_keys(parsed, kid, alg, keys, where="the issuer's key set")
        except JoseError as exc:
            raise UserTokenRejected("user_token_invalid", f"user token: {exc}") from None
        _check_time(claims, config, now)
        try:
            check_audience(claims, config.audience)
        except JoseError as exc:
            raise UserTokenRejected("user_token_wrong_audience", f"user token: {exc}") from None
        if claims.get("iss") != config.issuer:
            raise UserTokenRejected("user_token_issuer_untrusted", "user token issuer mismatch")
        key = keys.get(kid) if isinstance(kid, str) else None
        return _Accepted(
            claims, _user_context(claims, config), config, kid if key is not None else None, key
        )

    async def _issuer_keys(self, config: UserTokenIssuer, kid: str | None) -> Mapping[str, object]:
        try:
            return await self._key_sets[config.issuer].keys(kid)
        except IdentityError as exc:
            raise Unavailable(
                f"keys of user-token issuer {config.issuer} are unavailable: {exc}"
            ) from None


@dataclass(frozen=True, slots=True)
class _Accepted:
    """A user token that verified, what it says, and the key that verified it."""

    claims: Mapping[str, object]
    user: UserContext
    config: UserTokenIssuer
    kid: str | None
    key: object


def _check_time(claims: Mapping[str, object], config: UserTokenIssuer, now: float) -> None:
    try:
        check_time_claims(claims, now=now, leeway=config.leeway_seconds)
    except JoseError as exc:
        code = "user_token_expired" if "expired" in str(exc) else "user_token_invalid"
        raise UserTokenRejected(code, f"user token: {exc}") from None


def _key_set(issuer: UserTokenIssuer, clock: Clock) -> KeySet:
    if issuer.jwks_url is not None:
        return UrlKeySet(
            issuer.jwks_url,
            clock,
            refresh_seconds=issuer.jwks_refresh_seconds,
            ca_file=issuer.jwks_ca_file,
        )
    assert issuer.jwks_file is not None  # guaranteed by the settings loader
    return FileKeySet(issuer.jwks_file, clock)


def _user_context(claims: Mapping[str, object], config: UserTokenIssuer) -> UserContext:
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub or len(sub) > 256:  # noqa: PLR2004
        raise UserTokenRejected("user_token_invalid", "user token has no valid 'sub' claim")
    tier = claims.get(config.tier_claim)
    if tier is not None and not isinstance(tier, str):
        raise UserTokenRejected(
            "user_token_invalid", f"user token claim {config.tier_claim!r} is not a string"
        )
    raw_groups = claims.get(config.groups_claim, [])
    if isinstance(raw_groups, str):
        raw_groups = raw_groups.split()
    if not isinstance(raw_groups, list) or not all(isinstance(g, str) for g in raw_groups):
        raise UserTokenRejected(
            "user_token_invalid",
            f"user token claim {config.groups_claim!r} is not a list of strings",
        )
    jti = claims.get("jti")
    exp = claims.get("exp")
    return UserContext(
        issuer=config.issuer,
        subject=sub,
        expires_at=float(exp) if isinstance(exp, int | float) else 0.0,
        tier=tier,
        groups=tuple(str(g) for g in raw_groups),
        actors=actors_of(claims.get("act")),
        token_id=jti if isinstance(jti, str) else None,
    )


def check_may_act(
    may_act: object, actor: str, *, what: str, invalid: str = "user_token_invalid"
) -> None:
    """Refuse an actor that a token's RFC 8693 `may_act` claim does not name (section 4.4).

    No `may_act`: anyone the policy allows may act. Otherwise its `sub` must be the actor's
    SPIFFE ID. SPIFFE IDs are unique URIs, so `sub` alone identifies the agent; other
    members (an `iss`, say) are not compared.

    Args:
        may_act: The claim's value (None when absent).
        actor: The SPIFFE ID of the agent that would act.
        what: Which token, for the message (`user token`, `subject_token`).
        invalid: The reason code when the claim is malformed.

    Raises:
        UserTokenRejected: `actor_not_authorized`, or `invalid` when malformed.
    """
    if may_act is None:
        return
    if not isinstance(may_act, dict) or not isinstance(may_act.get("sub"), str):
        raise UserTokenRejected(invalid, f"{what} 'may_act' claim is not an object with a 'sub'")
    if may_act["sub"] != actor:
        raise UserTokenRejected(
            "actor_not_authorized",
            f"{what} 'may_act' does not name {actor} as an authorized actor",
        )


def actors_of(act: object) -> tuple[str, ...]:
    """The actors of an RFC 8693 `act` claim, least recent first.

    The outermost `act` is the current actor; nested ones are earlier actors.

    Raises:
        UserTokenRejected: Malformed or too deeply nested.
    """
    chain: list[str] = []
    current = act
    while current is not None:
        if not isinstance(current, dict) or not isinstance(current.get("sub"), str):
            raise UserTokenRejected("user_token_invalid", "user token 'act' claim is malformed")
        chain.append(current["sub"])
        if len(chain) > MAX_ACT_DEPTH:
            raise UserTokenRejected("user_token_invalid", "user token 'act' chain is too deep")
        current = current.get("act")
    return tuple(reversed(chain))
