"""Request bodies and headers the rows share."""

from __future__ import annotations

import json
from urllib.parse import urlencode

__all__ = ["DENIED_BODY", "ISSUE_BODY", "JSON", "bearer", "exchange_body"]

JSON = {"Content-Type": "application/json"}
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
