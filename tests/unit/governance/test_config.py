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


def test_the_webhook_must_be_https_unless_loopback() -> None:
    """http:// is refused except to a loopback address; https is taken as is."""
    local = {"webhook": {"url": "http://127.0.0.1:9/hook", "timeout_seconds": 2}}
    parsed = parse_approvals(Reader(Path("c.yaml"), local))
    assert (parsed.webhook_url, parsed.webhook_timeout_seconds) == ("http://127.0.0.1:9/hook", 2)
    remote = {"webhook": {"url": "http://hooks.example.org/x"}}
    with pytest.raises(ConfigError, match=r"webhook\.url"):
        parse_approvals(Reader(Path("c.yaml"), remote))
