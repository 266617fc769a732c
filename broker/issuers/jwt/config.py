"""The `jwt_issuer:` section: the broker's own JWT issuer (tools of `type: jwt`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from broker.config.reader import Reader
from broker.constants import ISSUER_ALGORITHMS, MAX_JWT_LEEWAY_SECONDS

__all__ = ["JwtIssuerSettings", "parse_jwt_issuer", "parse_jwt_tool"]


@dataclass(frozen=True, slots=True)
class JwtIssuerSettings:
    """The broker's own JWT issuer.

    Attributes:
        issuer: The `iss` of its tokens (default: the listener's URL).
        algorithm: What new keys sign with.
        keys_file: The key ring file (shared by replicas).
        auto_rotate: Add a successor key when the active one is `rotation_hours` old.
        rotation_hours: The age at which a key is succeeded.
        publish_ahead_seconds: How long a successor is published before it signs.
        leeway_seconds: Clock skew allowed to resource servers.
    """

    issuer: str | None
    # ES256: RFC 9068 validators (authlib, joserfc) refuse EdDSA by default (RFC 9864).
    algorithm: str = "ES256"
    keys_file: Path | None = None
    auto_rotate: bool = True
    rotation_hours: float = 168.0
    publish_ahead_seconds: int = 0
    leeway_seconds: int = 60


_D = JwtIssuerSettings(None)  # the defaults, written once above


def parse_jwt_issuer(reader: Reader) -> JwtIssuerSettings:
    """Parse the `jwt_issuer:` section.

    Raises:
        ConfigError: Naming the file and the key.
    """
    issuer = JwtIssuerSettings(
        issuer=reader.url("issuer") if reader.has("issuer") else None,
        algorithm=reader.string("algorithm", _D.algorithm, choices=ISSUER_ALGORITHMS),
        keys_file=reader.optional_path("keys_file"),
        auto_rotate=reader.boolean("auto_rotate", _D.auto_rotate),
        rotation_hours=reader.number(
            "rotation_hours", _D.rotation_hours, minimum=0.01, maximum=24 * 366
        ),
        publish_ahead_seconds=reader.integer(
            "publish_ahead_seconds", _D.publish_ahead_seconds, minimum=0, maximum=7 * 86400
        ),
        leeway_seconds=reader.integer(
            "leeway_seconds", _D.leeway_seconds, minimum=0, maximum=MAX_JWT_LEEWAY_SECONDS
        ),
    )
    reader.finish()
    return issuer


def parse_jwt_tool(tool: Reader) -> str:
    """A `type: jwt` tool's one key: its `audience` (the tokens' `aud`)."""
    return tool.string("audience", max_length=2048)
