"""Shadow rules: `shadow: true` records what it would deny and never blocks."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from broker.domain import ShadowDenial
from broker.errors import ConfigError
from broker.policy.loader import load_policy
from broker.policy.model import Mode
from tests.unit.policy.test_engine import CLAIMS, alice, ctx, engine

DENY_ALL = {"id": "lockdown", "effect": "deny", "agents": CLAIMS["agents"], "tools": ["*"]}


def test_a_shadow_deny_rule_allows_and_records_would_deny(tmp_path: Path) -> None:
    """`shadow: true` on a deny rule: allowed, with the rule, tool and reason in would_deny."""
    decision = engine(tmp_path, [CLAIMS, dict(DENY_ALL, shadow=True)]).decide(ctx(), "d")
    assert decision.allow
    assert decision.would_deny == (
        ShadowDenial(
            "lockdown",
            "crm",
            "denied_by_rule",
            "rule lockdown denies crm to spiffe://example.org/agent/claims",
        ),
    )
    enforced = engine(tmp_path, [CLAIMS, dict(DENY_ALL, shadow=False)]).decide(ctx(), "d")
    assert not enforced.allow
    assert enforced.would_deny == ()


def test_a_shadow_allow_rule_whose_conditions_fail_still_allows(tmp_path: Path) -> None:
    """A shadow allow rule with a failing condition allows, recording the failed condition."""
    rule = dict(CLAIMS, shadow=True, user={"tiers": ["platinum"]})
    decision = engine(tmp_path, [rule]).decide(ctx(user=alice()), "d")
    assert decision.allow
    assert [d.reason for d in decision.would_deny] == ["user_tier_not_allowed"]


def test_mode_dry_run_is_an_alias_and_a_contradiction_is_refused(tmp_path: Path) -> None:
    """`mode: dry_run` still means shadow; `shadow` contradicting `mode` names the key."""
    assert engine(tmp_path, [dict(CLAIMS, mode="dry_run")]).policy.rules[0].shadow
    assert engine(tmp_path, [dict(CLAIMS, mode="dry_run", shadow=True)]).policy.rules[0].shadow
    assert engine(tmp_path, [dict(CLAIMS, shadow=False)]).policy.rules[0].mode is Mode.ENFORCE
    path = tmp_path / "bad.yaml"
    bad = dict(CLAIMS, mode="enforce", shadow=True)
    path.write_text(yaml.safe_dump({"id": "t", "version": 1, "rules": [bad]}))
    with pytest.raises(ConfigError, match=r"rules\[0\]\.shadow"):
        load_policy(path)
