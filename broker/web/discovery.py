"""What resource servers discover: the issuer's metadata and its public keys."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from broker.typing import TokenVerifier

__all__ = ["Discovery"]


@dataclass(frozen=True, slots=True)
class Discovery:
    """The broker's token issuer, as resource servers see it (None: mints no tokens)."""

    tokens: TokenVerifier | None
    default_issuer: str

    @property
    def issuer(self) -> str:
        """The `iss` of the broker's tokens (and the metadata's `issuer`)."""
        return self.tokens.issuer if self.tokens is not None else self.default_issuer

    def jwks(self) -> Mapping[str, object] | None:
        """The JWKS document, or None without a token issuer."""
        return self.tokens.jwks() if self.tokens is not None else None

    @property
    def algorithms(self) -> tuple[str, ...]:
        """The signing algorithms in use."""
        return self.tokens.algorithms if self.tokens is not None else ()
