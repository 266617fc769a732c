"""The hook's values: a credential it holds and a broker response. Frozen, secrets out of repr."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

from broker.hook.errors import EXIT_UNREACHABLE, HookError

__all__ = ["BrokerResponse", "Credential", "parse_issued"]


@dataclass(frozen=True, slots=True)
class BrokerResponse:
    """A decoded broker response."""

    status: int
    body: Any = field(repr=False)
    retry_after: float | None = None
    date: float | None = None  # the broker's clock (`Date` header), seconds since the epoch

    def member(self, name: str) -> object:
        """A member of a JSON object body, or None."""
        return self.body.get(name) if isinstance(self.body, dict) else None


@dataclass(frozen=True, slots=True)
class Credential:
    """One credential the hook holds: the broker's credential object and when it was received.

    Attributes:
        tool: The tool it is for.
        type: `jwt`, `vault`, ...
        expires_at: Expiry, seconds since the epoch.
        received_at: When the hook received it, seconds since the epoch.
        decision_id: The broker's decision that issued it.
        document: The credential object as the broker sent it (holds the secret).
    """

    tool: str
    type: str
    expires_at: float
    received_at: float
    decision_id: str
    document: Mapping[str, Any] = field(repr=False, compare=False)

    @property
    def token(self) -> str | None:
        """The bearer token (`jwt` credentials), or None."""
        token = self.document.get("token")
        return token if isinstance(token, str) else None

    @property
    def credential_id(self) -> str:
        """The broker's credential id (a JWT's `jti`, a Vault lease id)."""
        return str(self.document.get("credential_id", ""))

    @property
    def data(self) -> Mapping[str, str]:
        """The secret fields of a `vault` credential (`username`, `password`, ...)."""
        data = self.document.get("data")
        if not isinstance(data, dict):
            return {}
        return {str(k): v if isinstance(v, str) else str(v) for k, v in data.items()}

    @property
    def refresh_at(self) -> float:
        """Half-life: when a fresh one should be fetched."""
        return self.received_at + (self.expires_at - self.received_at) / 2

    def file_document(self) -> dict[str, Any]:
        """What the per-tool file holds: the credential object plus its `decision_id`."""
        return {**self.document, "decision_id": self.decision_id}


def parse_issued(body: object, *, received_at: float, skew: float = 0.0) -> list[Credential]:
    """The credentials of a 201 `POST /v1/credentials` body.

    Args:
        body: The decoded body.
        received_at: Our clock when it arrived.
        skew: Our clock minus the broker's: added to each `expires_at`, so that expiries
            are on our clock.

    Raises:
        HookError: The body is not what the contract promises (exit 4: the broker is failing).
    """
    items = body.get("credentials") if isinstance(body, dict) else None
    if not isinstance(body, dict) or not isinstance(items, list) or not items:
        raise HookError(EXIT_UNREACHABLE, "malformed credentials response (no credentials)")
    decision_id = str(body.get("decision_id", ""))
    credentials: list[Credential] = []
    for item in items:
        try:
            credentials.append(
                Credential(
                    tool=str(item["tool"]),
                    type=str(item["type"]),
                    expires_at=datetime.fromisoformat(str(item["expires_at"])).timestamp() + skew,
                    received_at=received_at,
                    decision_id=decision_id,
                    document=MappingProxyType(dict(item)),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise HookError(
                EXIT_UNREACHABLE, f"malformed credentials response ({type(exc).__name__})"
            ) from None
    return credentials
