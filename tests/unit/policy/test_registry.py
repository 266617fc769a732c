"""The agent registry: entries in the policy file, declared tools enforced before the rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.errors import ConfigError
from broker.policy.loader import load_policy
from tests.unit.policy.test_engine import CLAIMS, ctx, engine

CLAIMS_ID = "spiffe://example.org/agent/claims"
WIDE = {"id": "wide", "agents": ["spiffe://example.org/agent/*"], "tools": ["*"]}


def entry(spiffe_id: str = CLAIMS_ID, **extra: Any) -> dict[str, Any]:
    return {"spiffe_id": spiffe_id, **extra}


def test_entry_fields_are_loaded(tmp_path: Path) -> None:
    """Owner (team, contact), description, environment, version, declared_tools are read."""
    registered = entry(
        owner={"team": "claims", "contact": "claims@example.org"},
        description="claims bot",
        environment="production",
        version=3,
        declared_tools=["crm"],
    )
    policy = engine(tmp_path, [CLAIMS], agents=[registered]).policy
    (agent,) = policy.agents
    assert (agent.owner_team, agent.owner_contact) == ("claims", "claims@example.org")
    assert (agent.description, agent.environment, agent.version) == (
        "claims bot",
        "production",
        "3",
    )
    assert agent.declared_tools == frozenset({"crm"})


def test_a_tool_outside_the_declared_tools_is_denied(tmp_path: Path) -> None:
    """Even a rule allowing every tool cannot grant an undeclared one: tool_not_declared."""
    policy = engine(tmp_path, [WIDE], agents=[entry(declared_tools=["crm"])])
    assert policy.decide(ctx(tools=("crm",)), "d").allow
    denied = policy.decide(ctx(tools=("crm", "mail")), "d")
    assert not denied.allow
    assert denied.reasons == ("tool_not_declared",)


def test_no_entry_or_no_declared_tools_means_no_restriction(tmp_path: Path) -> None:
    """Agents without an entry, or whose entry declares no tools, are decided by rules alone."""
    policy = engine(tmp_path, [WIDE], agents=[entry(description="no declaration")])
    assert policy.decide(ctx(tools=("mail",)), "d").allow
    assert policy.decide(ctx("spiffe://example.org/agent/other", ("mail",)), "d").allow


def test_the_exact_entry_wins_over_a_pattern_and_the_longest_pattern_wins(
    tmp_path: Path,
) -> None:
    """Exact ID first, else the longest matching `/*` entry."""
    agents = [
        entry("spiffe://example.org/*", declared_tools=["db"]),
        entry("spiffe://example.org/agent/*", declared_tools=["mail"]),
        entry(declared_tools=["crm"]),
    ]
    policy = engine(tmp_path, [WIDE], agents=agents)
    assert policy.decide(ctx(tools=("crm",)), "d").allow
    assert policy.decide(ctx("spiffe://example.org/agent/x", ("mail",)), "d").allow
    assert not policy.decide(ctx("spiffe://example.org/agent/x", ("crm",)), "d").allow
    assert policy.registry.entry_for("spiffe://example.org/svc/y") is agents_entry(policy, 0)
    assert policy.registry.entry_for("spiffe://other.org/agent/x") is None


def agents_entry(policy: Any, index: int) -> Any:
    return policy.policy.agents[index]


@pytest.mark.parametrize(
    ("agents", "message"),
    [
        ([entry(declared_tools=["nope"])], "does not define"),
        ([entry(declared_tools=["*"])], "not '*'"),
        ([entry(), entry()], "a second time"),
        ([entry("spiffe://example.org/a*")], "wildcards"),
        ([entry(owner={"name": "x"})], "name"),
    ],
)
def test_invalid_entries_are_refused(tmp_path: Path, agents: list[Any], message: str) -> None:
    """Unknown tools, '*', duplicates, bad patterns and unknown keys name the file and key."""
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump({"id": "t", "version": 1, "rules": [CLAIMS], "agents": agents}))
    with pytest.raises(ConfigError, match=message) as caught:
        load_policy(path, known_tools=frozenset({"crm", "mail", "db"}))
    assert "agents[" in str(caught.value)
