"""RFC 7662 introspection of the broker's own tokens.

Who may know: the token's owner agent, an administrator, or a configured resource server;
anyone else learns only `{"active": false}`, as for an expired, revoked or unknown token.
"""

from __future__ import annotations

from collections.abc import Mapping

from broker.domain import Caller
from broker.typing import StateStore, TokenVerifier

__all__ = ["INACTIVE", "Introspection"]

INACTIVE: Mapping[str, object] = {"active": False}
_CLAIMS = (
    "iss",
    "sub",
    "aud",
    "client_id",
    "scope",
    "exp",
    "iat",
    "nbf",
    "jti",
    "act",
    "tool",
    "cnf",
)


class Introspection:
    """Answers whether a token is active, and its claims to those who may know."""

    def __init__(
        self,
        *,
        verifier: TokenVerifier | None,
        state: StateStore,
        admins: frozenset[str],
        resource_servers: frozenset[str],
    ) -> None:
        """Wire the parts."""
        self._verifier = verifier
        self._state = state
        self._may_know = admins | resource_servers

    async def introspect(self, caller: Caller, token: str) -> Mapping[str, object]:
        """The token's claims if active and the caller may know, else inactive.

        Raises:
            Unavailable: The state store cannot say whether it was revoked.
        """
        claims = self._verifier.verify(token) if self._verifier is not None else None
        if claims is None:
            return INACTIVE
        record = await self._state.get_credential(str(claims["jti"]))
        if record is None or record.revoked or await self._state.agent_revoked(record.agent):
            return INACTIVE
        if caller.spiffe_id != record.agent and caller.spiffe_id not in self._may_know:
            return INACTIVE
        body: dict[str, object] = {"active": True, "token_type": "Bearer"}
        body.update((name, claims[name]) for name in _CLAIMS if name in claims)
        return body
