"""The `user_token_issuers:` section: identity providers whose tokens carry delegation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from broker.config.reader import Reader
from broker.constants import MAX_JWT_LEEWAY_SECONDS, USER_TOKEN_ALGORITHMS

__all__ = ["UserTokenIssuer", "parse_user_token_issuers"]

DEFAULT_ALGORITHMS = ("EdDSA", "ES256", "RS256", "PS256")
DEFAULT_LEEWAY_SECONDS = 30
DEFAULT_REFRESH_SECONDS = 300


@dataclass(frozen=True, slots=True)
class UserTokenIssuer:
    """An identity provider whose user tokens carry delegation context."""

    issuer: str
    audience: tuple[str, ...]
    jwks_file: Path | None = None
    jwks_url: str | None = None
    jwks_ca_file: Path | None = None
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    leeway_seconds: int = DEFAULT_LEEWAY_SECONDS
    tier_claim: str = "tier"
    groups_claim: str = "groups"
    jwks_refresh_seconds: int = DEFAULT_REFRESH_SECONDS


def parse_user_token_issuers(root: Reader, name: str) -> tuple[UserTokenIssuer, ...]:
    """Parse the list at `name`.

    Raises:
        ConfigError: Naming the file and the key.
    """
    issuers: list[UserTokenIssuer] = []
    for item in root.sections(name):
        issuer = item.string("issuer", max_length=2048)
        jwks_file = item.optional_path("jwks_file")
        jwks_url = item.url("jwks_url") if item.has("jwks_url") else None
        if (jwks_file is None) == (jwks_url is None):
            raise item.error("jwks_file", "exactly one of jwks_file and jwks_url is required")
        issuers.append(
            UserTokenIssuer(
                issuer=issuer,
                audience=item.strings("audience", non_empty=True),
                jwks_file=jwks_file,
                jwks_url=jwks_url,
                jwks_ca_file=item.optional_path("jwks_ca_file"),
                algorithms=item.strings(
                    "algorithms",
                    DEFAULT_ALGORITHMS,
                    choices=USER_TOKEN_ALGORITHMS,
                    non_empty=True,
                ),
                leeway_seconds=item.integer(
                    "leeway_seconds",
                    DEFAULT_LEEWAY_SECONDS,
                    minimum=0,
                    maximum=MAX_JWT_LEEWAY_SECONDS,
                ),
                tier_claim=item.string("tier_claim", "tier"),
                groups_claim=item.string("groups_claim", "groups"),
                jwks_refresh_seconds=item.integer(
                    "jwks_refresh_seconds", DEFAULT_REFRESH_SECONDS, minimum=30, maximum=86400
                ),
            )
        )
        item.finish()
    names = [i.issuer for i in issuers]
    if len(set(names)) != len(names):
        raise root.error(name, "lists an issuer twice")
    return tuple(issuers)
