"""Request bodies and headers the rows share."""

from __future__ import annotations

import json
from urllib.parse import urlencode

from bench.domain import DevDomain

__all__ = [
    "DENIED_BODY",
    "FORM",
    "ISSUE_BODY",
    "JSON",
    "PATHS",
    "bearer",
    "exchange_body",
    "request_for",
]

JSON = {"Content-Type": "application/json"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
ISSUE_BODY = json.dumps({"tools": ["analytics_api"]}, separators=(",", ":"))
DENIED_BODY = json.dumps({"tools": ["customer_data_api"]}, separators=(",", ":"))


def bearer(token: str) -> dict[str, str]:
    """JSON request headers with a JWT-SVID bearer."""
    return {**JSON, "Authorization": f"Bearer {token}"}


def exchange_body(user_token: str, audience: str = "customer_data_api") -> str:
    """An RFC 8693 token-exchange form for `POST /v1/token`."""
    return urlencode(
        {
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token": user_token,
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "audience": audience,
        }
    )


PATHS = ("issue", "exchange", "deny")


def request_for(domain: DevDomain, path: str) -> tuple[str, str, dict[str, str], int]:
    """(endpoint, body, headers, expected status) of one JWT-SVID request kind of `PATHS`.

    issue: `POST /v1/credentials` as analytics (201); exchange: RFC 8693 `POST /v1/token`
    as claims for alice (200); deny: analytics asks for a tool it may not have (403).
    """
    if path == "exchange":
        headers = {**bearer(domain.jwt_svid("claims")), **FORM}
        return "/v1/token", exchange_body(domain.user_token("alice")), headers, 200
    body, status = (ISSUE_BODY, 201) if path == "issue" else (DENIED_BODY, 403)
    return "/v1/credentials", body, bearer(domain.jwt_svid("analytics")), status
