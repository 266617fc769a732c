"""What every issuer receives, and how an issuer kind plugs in (its factory)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from broker.domain import Decision, RequestContext, ToolGrant

if TYPE_CHECKING:
    from broker.audit import LeaseHasher
    from broker.config.reader import Reader
    from broker.config.settings import Settings, ToolSettings
    from broker.metrics import Metrics
    from broker.typing import Clock, IdentitySource, Issuer, StateStore, TokenVerifier

__all__ = [
    "IssueRequest",
    "IssuerDeps",
    "IssuerFactory",
    "IssuerParts",
    "ToolOptions",
    "act_claim",
]


@dataclass(frozen=True, slots=True)
class IssueRequest:
    """One credential to issue, already allowed by the policy.

    Attributes:
        ctx: The request context (caller, user, delegation chain).
        decision: The allowing decision.
        grant: The policy's answer for this tool (rule, scopes).
        tool: The tool's configuration.
        ttl: The granted TTL in seconds.
    """

    ctx: RequestContext
    decision: Decision
    grant: ToolGrant
    tool: ToolSettings
    ttl: int


def act_claim(ctx: RequestContext) -> dict[str, object]:
    """The RFC 8693 `act` claim of a request's delegation chain.

    The acting agent is the outermost `act`; earlier actors nest inside it, the least
    recent deepest. The user is the `sub`, never an actor.
    """
    act: dict[str, object] = {"sub": ctx.caller.spiffe_id}
    cursor = act
    for actor in reversed(ctx.actors):
        nested: dict[str, object] = {"sub": actor}
        cursor["act"] = nested
        cursor = nested
    return act


@dataclass(frozen=True, slots=True)
class ToolOptions:
    """What an issuer kind reads from a tool's configuration.

    Attributes:
        audience: The tool's audience URI, when its credentials are tokens for it.
        options: The issuer's own per-tool settings (e.g. which Vault path).
    """

    audience: str | None = None
    options: object = None


@dataclass(frozen=True, slots=True)
class IssuerDeps:
    """What the runtime hands every issuer factory."""

    settings: Settings
    clock: Clock
    identity: IdentitySource
    state: StateStore
    lease_hasher: LeaseHasher
    metrics: Metrics


@dataclass(frozen=True, slots=True)
class IssuerParts:
    """An opened issuer and what else it offers the broker.

    Attributes:
        issuer: The issuer.
        token_verifier: Verifies the tokens it mints (introspection, exchange, revocation
            by token, JWKS and metadata), if it mints the broker's own tokens.
        exchangeable: Whether RFC 8693 token exchange may return its credentials (bearer
            tokens), not only `POST /v1/credentials`.
        gauges: Values `/metrics` reads at scrape time, by metric name.
        signer: Signs other claims with the broker's token key (`sign(claims, typ)` ->
            compact JWS, verifiable with the JWKS), e.g. approval webhooks.
    """

    issuer: Issuer
    token_verifier: TokenVerifier | None = None
    exchangeable: bool = False
    gauges: Mapping[str, tuple[str, Callable[[], float]]] = field(default_factory=dict)
    signer: Callable[[dict[str, object], str], str] | None = None


class IssuerFactory(Protocol):
    """An issuer kind: parses its configuration and opens the issuer."""

    @property
    def kind(self) -> str:
        """The tools' `type` value that selects this issuer."""
        ...

    @property
    def section(self) -> str:
        """The top-level configuration section with this issuer's settings."""
        ...

    def parse(self, reader: Reader) -> object:
        """Parse the issuer's section.

        Raises:
            ConfigError: Naming the file and the key.
        """
        ...

    def parse_tool(self, reader: Reader) -> ToolOptions:
        """Read the keys of a tool of this kind (besides `type` and `scope`).

        Raises:
            ConfigError: Naming the file and the key.
        """
        ...

    def open(self, deps: IssuerDeps, settings: object) -> AbstractAsyncContextManager[IssuerParts]:
        """Open the issuer for the life of the process (closed on exit).

        Raises:
            ConfigError: Its keys or settings are unusable.
            Unavailable: Its backend cannot be reached at start-up.
        """
        ...
