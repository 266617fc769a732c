"""The `authentication:` section: how callers' SVIDs are verified."""

from __future__ import annotations

from dataclasses import dataclass

from broker.config.reader import Reader
from broker.constants import JWT_SVID_ALGORITHMS, MAX_JWT_LEEWAY_SECONDS

__all__ = ["AuthnSettings", "JwtSvidSettings", "parse_authentication"]

DEFAULT_LEEWAY_SECONDS = 30
DEFAULT_MAX_TOKEN_BYTES = 8192
DEFAULT_XFCC_HEADER = "x-forwarded-client-cert"
# exp - iat of an acceptable JWT-SVID; SPIRE's default JWT-SVID TTL is 5 minutes.
DEFAULT_MAX_LIFETIME_SECONDS = 3600


@dataclass(frozen=True, slots=True)
class JwtSvidSettings:
    """How JWT-SVID bearers are validated."""

    audience: tuple[str, ...]
    algorithms: tuple[str, ...] = JWT_SVID_ALGORITHMS
    leeway_seconds: int = DEFAULT_LEEWAY_SECONDS
    max_token_bytes: int = DEFAULT_MAX_TOKEN_BYTES
    max_lifetime_seconds: int = DEFAULT_MAX_LIFETIME_SECONDS


@dataclass(frozen=True, slots=True)
class AuthnSettings:
    """How callers authenticate."""

    jwt_svid: JwtSvidSettings
    trusted_proxies: frozenset[str] = frozenset()
    forwarded_client_cert_header: str = DEFAULT_XFCC_HEADER


def parse_authentication(reader: Reader) -> AuthnSettings:
    """Parse the `authentication:` section.

    Raises:
        ConfigError: Naming the file and the key.
    """
    section = reader.section("jwt_svid", required=True)
    jwt_svid = JwtSvidSettings(
        audience=section.strings("audience", non_empty=True),
        algorithms=section.strings(
            "algorithms", JWT_SVID_ALGORITHMS, choices=JWT_SVID_ALGORITHMS, non_empty=True
        ),
        leeway_seconds=section.integer(
            "leeway_seconds", DEFAULT_LEEWAY_SECONDS, minimum=0, maximum=MAX_JWT_LEEWAY_SECONDS
        ),
        max_token_bytes=section.integer(
            "max_token_bytes", DEFAULT_MAX_TOKEN_BYTES, minimum=512, maximum=65536
        ),
        max_lifetime_seconds=section.integer(
            "max_lifetime_seconds", DEFAULT_MAX_LIFETIME_SECONDS, minimum=60, maximum=86400
        ),
    )
    section.finish()
    authn = AuthnSettings(
        jwt_svid=jwt_svid,
        trusted_proxies=frozenset(reader.spiffe_ids("trusted_proxies")),
        forwarded_client_cert_header=reader.string(
            "forwarded_client_cert_header", DEFAULT_XFCC_HEADER, pattern=r"[A-Za-z0-9-]+"
        ).lower(),
    )
    reader.finish()
    return authn
