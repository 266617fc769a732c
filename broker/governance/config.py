"""The `approvals:` section: who may approve besides administrators, and for how long."""

from __future__ import annotations

from dataclasses import dataclass

from broker.config.reader import Reader

__all__ = ["DEFAULT_EXPIRY_SECONDS", "ApprovalSettings", "parse_approvals"]

DEFAULT_EXPIRY_SECONDS = 900


@dataclass(frozen=True, slots=True)
class ApprovalSettings:
    """Human approval settings.

    Attributes:
        expiry_seconds: How long an approval may stay pending (default 15 minutes).
        approver_groups: User-token groups whose members may approve (besides admins).
    """

    expiry_seconds: int = DEFAULT_EXPIRY_SECONDS
    approver_groups: frozenset[str] = frozenset()


def parse_approvals(reader: Reader) -> ApprovalSettings:
    """Parse the `approvals:` section.

    Raises:
        ConfigError: Naming the file and the key.
    """
    settings = ApprovalSettings(
        expiry_seconds=reader.integer(
            "expiry_seconds", DEFAULT_EXPIRY_SECONDS, minimum=10, maximum=7 * 86400
        ),
        approver_groups=frozenset(reader.strings("approver_groups", ())),
    )
    reader.finish()
    return settings
