"""What the Rego engine's tests share: the development trust domain, its tools and agents."""

from __future__ import annotations

from datetime import UTC, datetime

TD = "example.org"
NOW = datetime(2026, 11, 18, 10, 0, tzinfo=UTC)
TOOLS = {"customer_data_api": ("customers:read",), "ticketing_api": (), "analytics_api": ()}
CLAIMS = f"spiffe://{TD}/agent/claims"
ANALYTICS = f"spiffe://{TD}/agent/analytics"
IDP = f"https://idp.{TD}"
