"""The `approvals:` section: defaults, values, and errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.config.reader import Reader
from broker.errors import ConfigError
from broker.governance.config import ApprovalSettings, parse_approvals


def test_defaults_and_values() -> None:
    """15 minutes and no approver groups by default; both configurable."""
    assert parse_approvals(Reader(Path("c.yaml"), {})) == ApprovalSettings(900, frozenset())
    parsed = parse_approvals(
        Reader(Path("c.yaml"), {"expiry_seconds": 60, "approver_groups": ["ops"]})
    )
    assert parsed == ApprovalSettings(60, frozenset({"ops"}))


def test_errors_name_the_key() -> None:
    """An out-of-range expiry or an unknown key is a ConfigError naming it."""
    with pytest.raises(ConfigError, match="expiry_seconds"):
        parse_approvals(Reader(Path("c.yaml"), {"expiry_seconds": 1}))
    with pytest.raises(ConfigError, match="webhook"):
        parse_approvals(Reader(Path("c.yaml"), {"webhook": "x"}))
