"""What agents ask for, validated by the web layer before the pipeline sees it."""

from __future__ import annotations

from dataclasses import dataclass

from broker.domain import Secret

__all__ = ["CredentialRequest", "ExchangeRequest"]


@dataclass(frozen=True, slots=True)
class CredentialRequest:
    """A validated `POST /v1/credentials` body."""

    tools: tuple[str, ...]
    ttl_seconds: int | None = None
    user_token: Secret | None = None
    session_id: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class ExchangeRequest:
    """A validated RFC 8693 token exchange (`POST /v1/token`)."""

    subject_token: Secret
    tool: str
    scopes: tuple[str, ...] | None = None
    actor_token: Secret | None = None
    # Whether the subject token is this broker's own (a narrowing); None: not yet known,
    # the context builder then reads its unverified `iss` (the handler already has).
    delegated: bool | None = None
