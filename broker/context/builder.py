"""Builds the `RequestContext` the policy decides on: who asks, for whom, for what.

For `POST /v1/credentials`, the user comes from the request's user token. For an RFC 8693
exchange, the subject token is either a user token (the same) or a live token of this
broker being narrowed for a sub-agent: then the user, the scopes and the delegation chain
come from that token and its record, and what is issued cannot outlive it.
A user or subject token that does not verify, or whose RFC 8693 `may_act` claim does not
name the calling agent, is not an error here: it becomes the `rejection` the pipeline
turns into an audited denial.
"""

from __future__ import annotations

import dataclasses

from broker.context.requests import CredentialRequest, ExchangeRequest
from broker.context.user_token import (
    UserTokenRejected,
    UserTokenVerifier,
    actors_of,
    check_may_act,
)
from broker.domain import Caller, RequestContext, Secret, UserContext
from broker.errors import OAuthError
from broker.jose import JoseError, unverified_claims
from broker.tracing import Tracer
from broker.typing import Authenticator, Clock, StateStore, TokenVerifier

__all__ = ["Built", "ContextBuilder"]

Built = tuple[RequestContext, UserTokenRejected | None]


class ContextBuilder:
    """Verifies delegation context and assembles request contexts."""

    def __init__(
        self,
        *,
        clock: Clock,
        user_tokens: UserTokenVerifier,
        state: StateStore,
        authenticator: Authenticator,
        tokens: TokenVerifier | None,
        tracer: Tracer | None = None,
    ) -> None:
        """Wire the parts.

        Args:
            clock: For `now`.
            user_tokens: Verifies end users' tokens.
            state: Where the broker's own tokens' records live (exchange of those).
            authenticator: Verifies an exchange's `actor_token` (a JWT-SVID).
            tokens: Verifies the broker's own tokens, if it mints any.
            tracer: The request's trace id goes in its context (and audit records).
        """
        self._clock = clock
        self._user_tokens = user_tokens
        self._state = state
        self._authenticator = authenticator
        self._tokens = tokens
        self._tracer = tracer or Tracer(None)

    async def verify_user_token(self, token: Secret) -> UserContext:
        """A user token on its own (an approver's), validated like any user token.

        Raises:
            UserTokenRejected: The token is not acceptable.
            Unavailable: The issuer's keys cannot be obtained.
        """
        return await self._user_tokens.verify(token.reveal())

    async def for_credentials(
        self, caller: Caller, request: CredentialRequest, *, request_id: str, remote: str | None
    ) -> Built:
        """The context of a credential request.

        Raises:
            Unavailable: The user token's issuer keys cannot be obtained.
        """
        user, rejection = None, None
        if request.user_token is not None:
            try:
                user = await self._user_tokens.verify(
                    request.user_token.reveal(), actor=caller.spiffe_id
                )
            except UserTokenRejected as exc:
                rejection = exc
        ctx = RequestContext(
            caller=caller,
            user=user,
            tools=request.tools,
            ttl_requested=request.ttl_seconds,
            now=self._clock.now(),
            request_id=request_id,
            remote=remote,
            session_id=request.session_id,
            reason=request.reason,
            actors=user.actors if user is not None else (),
            trace_id=self._tracer.trace_id(),
        )
        return ctx, rejection

    async def for_exchange(
        self, caller: Caller, request: ExchangeRequest, *, request_id: str, remote: str | None
    ) -> Built:
        """The context of an RFC 8693 exchange.

        Raises:
            OAuthError: Malformed exchange (actor mismatch, scope wider than the subject's,
                another tool than the subject token's).
            Unauthenticated: The actor token is not a valid JWT-SVID.
            Unavailable: A backend failed.
        """
        if request.actor_token is not None:
            actor = self._authenticator.verify_jwt_svid(request.actor_token.reveal())
            if actor.spiffe_id != caller.spiffe_id:
                raise OAuthError(
                    "invalid_request",
                    f"actor_token names {actor.spiffe_id}, not the authenticated agent",
                )
        token = request.subject_token.reveal()
        delegated = request.delegated
        if delegated is None:
            delegated = self.is_broker_token(token)
        if delegated:
            return await self._delegated(caller, token, request, request_id, remote)
        ctx, rejection = await self.for_credentials(
            caller,
            CredentialRequest(
                tools=(request.tool,),
                user_token=request.subject_token,
                reason="token exchange (RFC 8693)",
            ),
            request_id=request_id,
            remote=remote,
        )
        return _with_scopes(ctx, request.scopes), rejection

    def is_broker_token(self, token: str) -> bool:
        """Whether a token claims to be this broker's (by its unverified `iss`).

        Only routes a subject token to the right validation; nothing is trusted from it.
        """
        if self._tokens is None:
            return False
        try:
            return unverified_claims(token).get("iss") == self._tokens.issuer
        except JoseError:
            return False

    async def _delegated(
        self,
        caller: Caller,
        token: str,
        request: ExchangeRequest,
        request_id: str,
        remote: str | None,
    ) -> Built:
        """Narrowing a broker-issued token for a sub-agent."""
        claims = self._tokens.verify(token) if self._tokens is not None else None
        record = await self._state.get_credential(str(claims["jti"])) if claims else None
        rejection = None
        if claims is None or record is None:
            rejection = UserTokenRejected(
                "subject_token_invalid", "subject_token is not a live credential of this broker"
            )
        elif record.revoked or await self._state.agent_revoked(record.agent):
            rejection = UserTokenRejected("subject_token_revoked", "subject_token has been revoked")
        elif "may_act" in claims:
            rejection = _actor_rejection(claims["may_act"], caller.spiffe_id)
        if rejection is None and record is not None and record.tool != request.tool:
            raise OAuthError(
                "invalid_target",
                f"a delegated token can only be narrowed for its own tool ({record.tool})",
            )
        original = set(str(claims.get("scope", "")).split()) if claims else set()
        if request.scopes is not None and not set(request.scopes) <= original:
            raise OAuthError("invalid_scope", "requested scope is wider than the subject_token's")
        user = None
        if record is not None and record.user is not None and claims is not None:
            user = UserContext(
                issuer=record.user.issuer,
                subject=record.user.subject,
                expires_at=float(str(claims["exp"])),
                tier=record.user_tier,
                groups=record.user_groups,
            )
        ctx = RequestContext(
            caller=caller,
            user=user,
            tools=(request.tool,),
            ttl_requested=None,
            now=self._clock.now(),
            request_id=request_id,
            remote=remote,
            reason="token exchange (RFC 8693), delegated",
            scopes=request.scopes if request.scopes is not None else tuple(sorted(original)),
            actors=actors_of(claims.get("act")) if claims else (),
            not_after=float(str(claims["exp"])) if claims else None,
            trace_id=self._tracer.trace_id(),
        )
        return ctx, rejection


def _actor_rejection(may_act: object, actor: str) -> UserTokenRejected | None:
    try:
        check_may_act(may_act, actor, what="subject_token", invalid="subject_token_invalid")
    except UserTokenRejected as exc:
        return exc
    return None


def _with_scopes(ctx: RequestContext, scopes: tuple[str, ...] | None) -> RequestContext:
    return dataclasses.replace(ctx, scopes=scopes)
