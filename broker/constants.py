"""Limits and algorithm lists the whole broker shares: each written once, here."""

from __future__ import annotations

__all__ = [
    "ISSUER_ALGORITHMS",
    "JWT_SVID_ALGORITHMS",
    "MAX_BODY_BYTES",
    "MAX_CREDENTIAL_TTL",
    "MAX_JWT_LEEWAY_SECONDS",
    "MAX_TOKEN_BYTES",
    "TOOL_NAME_PATTERN",
    "USER_TOKEN_ALGORITHMS",
]

# The JWT-SVID specification (section 2.1) allows exactly these; never `none`, never HMAC.
JWT_SVID_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "ES256",
    "ES384",
    "ES512",
    "PS256",
    "PS384",
    "PS512",
)
# User tokens: asymmetric only, never `none` or HMAC.
USER_TOKEN_ALGORITHMS = ("EdDSA", *JWT_SVID_ALGORITHMS)
# What the broker signs its own tokens with.
ISSUER_ALGORITHMS = ("EdDSA", "ES256")
MAX_JWT_LEEWAY_SECONDS = 60
MAX_BODY_BYTES = 64 * 1024
# Any single token a request carries (user token, subject or actor token).
MAX_TOKEN_BYTES = 16 * 1024
# No credential lives longer than five minutes, whatever the policy says.
MAX_CREDENTIAL_TTL = 300
TOOL_NAME_PATTERN = r"[a-z][a-z0-9_.-]{0,63}"
