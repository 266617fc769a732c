"""The `approvals:` section: who may approve besides administrators, and for how long."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from broker.config.reader import Reader

__all__ = ["DEFAULT_EXPIRY_SECONDS", "ApprovalSettings", "parse_approvals"]

DEFAULT_EXPIRY_SECONDS = 900
_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


@dataclass(frozen=True, slots=True)
class ApprovalSettings:
    """Human approval settings.

    Attributes:
        expiry_seconds: How long an approval may stay pending (default 15 minutes).
        approver_groups: User-token groups whose members may approve (besides admins).
        webhook_url: Where pending approvals are announced (https; http only to loopback).
        webhook_timeout_seconds: The webhook call's timeout.
    """

    expiry_seconds: int = DEFAULT_EXPIRY_SECONDS
    approver_groups: frozenset[str] = frozenset()
    webhook_url: str | None = None
    webhook_timeout_seconds: float = 5.0


def parse_approvals(reader: Reader) -> ApprovalSettings:
    """Parse the `approvals:` section.

    Raises:
        ConfigError: Naming the file and the key.
    """
    url: str | None = None
    timeout = 5.0
    if reader.has("webhook"):
        webhook = reader.section("webhook")
        url = webhook.url("url", https_only=False)
        host = urlsplit(url).hostname or ""
        if url.startswith("http:") and host not in _LOOPBACK:
            raise webhook.error("url", "must be https (http only to a loopback address)")
        timeout = webhook.number("timeout_seconds", 5.0, minimum=0.1, maximum=60)
        webhook.finish()
    settings = ApprovalSettings(
        expiry_seconds=reader.integer(
            "expiry_seconds", DEFAULT_EXPIRY_SECONDS, minimum=10, maximum=7 * 86400
        ),
        approver_groups=frozenset(reader.strings("approver_groups", ())),
        webhook_url=url,
        webhook_timeout_seconds=timeout,
    )
    reader.finish()
    return settings
