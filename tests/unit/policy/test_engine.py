"""Policy decisions: matching, conditions, deny overrides, shadow mode, TTLs, limits, scopes."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.domain import AuthMethod, Caller, RequestContext, UserContext
from broker.limits import limit_checks
from broker.policy.engine import PolicyEngine
from broker.policy.loader import load_policy

NOW = datetime(2026, 11, 18, 10, 0, tzinfo=UTC)  # a Wednesday


def engine(tmp_path: Path, rules: list[dict[str, Any]], **extra: Any) -> PolicyEngine:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump({"id": "t", "version": 3, "rules": rules, **extra}))
    scopes = {"crm": ("crm:read", "crm:write"), "db": (), "mail": ("mail:send",)}
    return PolicyEngine(load_policy(path), scopes)


def ctx(
    agent: str = "spiffe://example.org/agent/claims",
    tools: tuple[str, ...] = ("crm",),
    *,
    ttl: int | None = None,
    user: UserContext | None = None,
    now: datetime = NOW,
    svid_life: float = 3600,
    scopes: tuple[str, ...] | None = None,
) -> RequestContext:
    caller = Caller(agent, "example.org", AuthMethod.X509_SVID, now + timedelta(seconds=svid_life))
    return RequestContext(caller, user, tools, ttl, now, "req", scopes=scopes)


def alice(**kw: Any) -> UserContext:
    base: dict[str, Any] = {
        "issuer": "https://idp.example.org",
        "subject": "alice",
        "expires_at": NOW.timestamp() + 3600,
        "tier": "gold",
        "groups": ("support",),
    }
    base.update(kw)
    return UserContext(**base)


CLAIMS = {"id": "claims", "agents": ["spiffe://example.org/agent/claims"], "tools": ["crm", "mail"]}


def test_allow_carries_rule_policy_version_and_ttl(tmp_path: Path) -> None:
    """An allowed request names the rule and the policy id and version (declared + hash)."""
    decision = engine(tmp_path, [CLAIMS]).decide(ctx(), "d1")
    assert decision.allow
    assert decision.decision_id == "d1"
    assert decision.rule_ids == ("claims",)
    assert decision.policy_id == "t"
    assert decision.policy_version.startswith("3+sha256:")
    assert decision.ttl_granted == 300


def test_default_deny_for_unknown_agent_and_unlisted_tool(tmp_path: Path) -> None:
    """No rule for the agent: agent_unknown; a rule but not for the tool: tool_not_allowed."""
    policy = engine(tmp_path, [CLAIMS])
    unknown = policy.decide(ctx("spiffe://example.org/agent/stranger"), "d")
    assert not unknown.allow
    assert unknown.reasons == ("agent_unknown",)
    unlisted = policy.decide(ctx(tools=("db",)), "d")
    assert unlisted.reasons == ("tool_not_allowed",)


def test_prefix_patterns_match_whole_subtrees_only(tmp_path: Path) -> None:
    """`/agent/*` matches everything below /agent/, not /agents or the trust domain root."""
    rule = {"id": "all-agents", "agents": ["spiffe://example.org/agent/*"], "tools": ["crm"]}
    policy = engine(tmp_path, [rule])
    assert policy.decide(ctx("spiffe://example.org/agent/x"), "d").allow
    assert policy.decide(ctx("spiffe://example.org/agent/team/x"), "d").allow
    assert not policy.decide(ctx("spiffe://example.org/agents/x"), "d").allow
    assert not policy.decide(ctx("spiffe://other.org/agent/x"), "d").allow


def test_deny_rule_overrides_allow(tmp_path: Path) -> None:
    """A matching deny rule wins over any allow rule."""
    deny = {
        "id": "no-free-tier",
        "effect": "deny",
        "agents": ["spiffe://example.org/agent/*"],
        "tools": ["*"],
        "user": {"tiers": ["free"]},
    }
    policy = engine(tmp_path, [CLAIMS, deny])
    assert policy.decide(ctx(user=alice()), "d").allow
    denied = policy.decide(ctx(user=alice(tier="free")), "d")
    assert denied.reasons == ("denied_by_rule",)


def test_user_conditions(tmp_path: Path) -> None:
    """Required user, issuer, tier and groups each deny with their own reason."""
    rule = dict(
        CLAIMS,
        user={
            "required": True,
            "issuers": ["https://idp.example.org"],
            "tiers": ["gold"],
            "groups_any": ["support", "claims"],
        },
    )
    policy = engine(tmp_path, [rule])
    assert policy.decide(ctx(user=alice()), "d").allow
    assert policy.decide(ctx(), "d").reasons == ("user_required",)
    assert policy.decide(ctx(user=alice(issuer="https://other")), "d").reasons == (
        "user_issuer_not_allowed",
    )
    assert policy.decide(ctx(user=alice(tier="silver")), "d").reasons == ("user_tier_not_allowed",)
    assert policy.decide(ctx(user=alice(groups=("sales",))), "d").reasons == (
        "user_groups_not_allowed",
    )


def test_ttl_over_the_rule_cap_is_denied_and_omitted_ttl_is_capped(tmp_path: Path) -> None:
    """An explicit TTL over the cap is refused; an omitted one gets the cap."""
    policy = engine(
        tmp_path, [dict(CLAIMS, max_ttl_seconds=120)], tools={"crm": {"max_ttl_seconds": 60}}
    )
    assert policy.decide(ctx(ttl=61), "d").reasons == ("ttl_exceeds_max",)
    assert policy.decide(ctx(ttl=60), "d").ttl_granted == 60
    assert policy.decide(ctx(), "d").ttl_granted == 60
    assert policy.decide(ctx(tools=("mail",)), "d").ttl_granted == 120


def test_ttl_is_bounded_by_svid_and_user_token(tmp_path: Path) -> None:
    """The SVID's and the user token's remaining lives bound the TTL."""
    policy = engine(tmp_path, [CLAIMS])
    assert policy.decide(ctx(svid_life=42.9), "d").ttl_granted == 42
    assert policy.decide(ctx(user=alice(expires_at=NOW.timestamp() + 17)), "d").ttl_granted == 17
    expiring = policy.decide(ctx(svid_life=0.5), "d")
    assert not expiring.allow
    assert expiring.reasons == ("credential_lifetime_exhausted",)


def test_multi_tool_requests_are_all_or_nothing(tmp_path: Path) -> None:
    """One denied tool denies the whole request, with that tool's reason."""
    decision = engine(tmp_path, [CLAIMS]).decide(ctx(tools=("crm", "db")), "d")
    assert not decision.allow
    assert [g.allowed for g in decision.tools] == [True, False]
    assert decision.ttl_granted == 0


def test_time_windows(tmp_path: Path) -> None:
    """A rule with office hours applies inside them only (overnight windows wrap)."""
    office = dict(
        CLAIMS,
        time_windows=[
            {
                "days": ["mon", "tue", "wed", "thu", "fri"],
                "start": "08:00",
                "end": "18:00",
                "timezone": "UTC",
            }
        ],
    )
    policy = engine(tmp_path, [office])
    assert policy.decide(ctx(), "d").allow
    assert policy.decide(ctx(now=NOW.replace(hour=19)), "d").reasons == ("outside_time_window",)
    assert not policy.decide(ctx(now=NOW + timedelta(days=3)), "d").allow  # Saturday
    night = dict(
        CLAIMS, id="night", time_windows=[{"days": ["wed"], "start": "22:00", "end": "06:00"}]
    )
    policy = engine(tmp_path, [night])
    assert policy.decide(ctx(now=NOW.replace(hour=23)), "d").allow
    assert policy.decide(ctx(now=NOW.replace(hour=5) + timedelta(days=1)), "d").allow  # Thu 05:00
    assert not policy.decide(ctx(now=NOW.replace(hour=5)), "d").allow  # Wed 05:00 belongs to Tue


def test_dry_run_rule_records_but_does_not_enforce(tmp_path: Path) -> None:
    """A dry-run rule's denials land in `shadow`; the request is allowed."""
    shadow = dict(CLAIMS, mode="dry_run", user={"tiers": ["platinum"]})
    decision = engine(tmp_path, [shadow]).decide(ctx(user=alice()), "d")
    assert decision.allow
    assert decision.shadow == (
        "claims: user_tier_not_allowed: user tier 'gold' not allowed by rule claims",
    )
    deny_shadow = {
        "id": "d",
        "effect": "deny",
        "mode": "dry_run",
        "agents": CLAIMS["agents"],
        "tools": ["*"],
    }
    decision = engine(tmp_path, [CLAIMS, deny_shadow]).decide(ctx(), "d")
    assert decision.allow
    assert decision.shadow[0].startswith("d: denied_by_rule")


def test_delegation_depth(tmp_path: Path) -> None:
    """Earlier actors in the user token count against max_delegation_depth."""
    policy = engine(tmp_path, [dict(CLAIMS, max_delegation_depth=1)])
    one = ctx(user=alice())
    assert policy.decide(
        dataclasses.replace(one, actors=("spiffe://example.org/agent/a",)), "d"
    ).allow
    deep = dataclasses.replace(
        one, actors=("spiffe://example.org/agent/a", "spiffe://example.org/agent/b")
    )
    assert policy.decide(deep, "d").reasons == ("delegation_too_deep",)


def test_scopes_come_from_the_tool_and_rules_only_narrow(tmp_path: Path) -> None:
    """Granted scopes are the tool's, narrowed by the rule; a wider request is refused."""
    policy = engine(tmp_path, [dict(CLAIMS, scopes=["crm:read", "admin:all"])])
    grant = policy.decide(ctx(), "d").tools[0]
    assert grant.scopes == ("crm:read",)  # admin:all is not a scope of the tool
    assert policy.decide(ctx(scopes=("crm:write",)), "d").reasons == ("scope_not_allowed",)
    assert policy.decide(ctx(scopes=("crm:read",)), "d").tools[0].scopes == ("crm:read",)


def test_limits_are_keyed_by_the_declared_attributes(tmp_path: Path) -> None:
    """A per-user limit on a two-tool request costs two under one key (the limits step)."""
    limited = dict(
        CLAIMS,
        rate_limits=[{"per": ["user"], "limit": 5, "window_seconds": 60}],
        budgets=[{"per": ["agent", "tool"], "limit": 100, "period_seconds": 86400}],
    )
    request = ctx(tools=("crm", "mail"), user=alice())
    checks = limit_checks(request, engine(tmp_path, [limited]).decide(request, "d"))
    rate = [c for c in checks if c.kind == "rate"]
    budget = [c for c in checks if c.kind == "budget"]
    assert len(rate) == 1
    assert rate[0].cost == 2
    assert rate[0].key == "claims|rate|60|user=https://idp.example.org#alice"
    assert sorted(c.key.rsplit("=", 1)[1] for c in budget) == ["crm", "mail"]


def test_first_allowing_rule_in_file_order_wins(tmp_path: Path) -> None:
    """Several allowing rules: the first in file order brings its cap."""
    first = dict(CLAIMS, id="short", max_ttl_seconds=30)
    second = dict(CLAIMS, id="long", max_ttl_seconds=300)
    decision = engine(tmp_path, [first, second]).decide(ctx(), "d")
    assert decision.rule_ids == ("short",)
    assert decision.ttl_granted == 30


@pytest.mark.parametrize("count", [10, 10_000])
def test_index_finds_the_same_rules_whatever_the_number_of_agents(
    tmp_path: Path, count: int
) -> None:
    """The index returns exactly the matching rules among many."""
    rules = [
        {"id": f"r{i}", "agents": [f"spiffe://example.org/agent/a{i}"], "tools": ["crm"]}
        for i in range(count)
    ]
    rules.append({"id": "team", "agents": ["spiffe://example.org/agent/*"], "tools": ["db"]})
    policy = engine(tmp_path, rules)
    assert [r.id for r in policy.rules_for("spiffe://example.org/agent/a7")] == ["r7", "team"]
    assert policy.decide(ctx(f"spiffe://example.org/agent/a{count - 1}"), "d").allow


def test_user_conditions_need_a_user(tmp_path: Path) -> None:
    """User conditions need a user: allow rules then refuse, deny rules do not match."""
    gold_only = dict(CLAIMS, user={"tiers": ["gold"]})
    allow = engine(tmp_path, [gold_only])
    assert allow.decide(ctx(user=alice()), "d").allow
    assert allow.decide(ctx(), "d").reasons == ("user_required",)
    no_free = {
        "id": "no-free",
        "effect": "deny",
        "agents": ["spiffe://example.org/agent/*"],
        "tools": ["*"],
        "user": {"tiers": ["free"]},
    }
    deny = engine(tmp_path, [CLAIMS, no_free])
    assert deny.decide(ctx(), "d").allow  # no user: the free-tier rule is not about this request
    assert deny.decide(ctx(user=alice(tier="free")), "d").reasons == ("denied_by_rule",)
