"""A large policy is parsed in a child process; the result is the same policy."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from broker.errors import ConfigError
from broker.policy.isolated import ISOLATE_BYTES, load_policy_file
from broker.policy.loader import load_policy

TOOLS = frozenset({"crm", "mail"})


def big_policy(path: Path, rules: int, *, broken: bool = False) -> Path:
    document = {
        "id": "big",
        "version": 1,
        "rules": [
            {
                "id": f"agent-{i:05d}",
                "description": "a generated agent with a long enough description " * 2,
                "agents": [f"spiffe://example.org/agent/a{i:05d}"],
                "tools": ["crm"] if i % 2 else ["crm", "mail"],
                "max_ttl_seconds": 300,
                "rate_limits": [{"per": ["user"], "limit": 60, "window_seconds": 60}],
                "user": {"required": True, "tiers": ["gold"]} if i % 3 else {"required": False},
            }
            for i in range(rules)
        ],
    }
    if broken:
        document["rules"][-1]["tools"] = ["unknown_tool"]
    path.write_text(yaml.safe_dump(document))
    assert path.stat().st_size > ISOLATE_BYTES
    return path


def test_a_large_policy_loads_in_a_child_to_the_same_result(tmp_path: Path) -> None:
    """Parsed in a child process, the policy equals the one parsed here."""
    path = big_policy(tmp_path / "policy.yaml", 1200)
    assert load_policy_file(path, known_tools=TOOLS) == load_policy(path, known_tools=TOOLS)


def test_an_invalid_large_policy_names_the_file_and_key(tmp_path: Path) -> None:
    """A validation error in the child comes back as the same one-line ConfigError."""
    path = big_policy(tmp_path / "policy.yaml", 1200, broken=True)
    with pytest.raises(ConfigError, match=r"rules\[1199\]\.tools"):
        load_policy_file(path, known_tools=TOOLS)
