"""Policy files: validation names file and key; reloads are validated first."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.errors import ConfigError
from broker.policy.loader import load_policy
from broker.policy.reloader import ReloadingPolicy
from tests.support.broker import eventually
from tests.support.clock import ManualClock

VALID: dict[str, Any] = {
    "id": "p",
    "version": 1,
    "rules": [{"id": "r", "agents": ["spiffe://example.org/agent/a"], "tools": ["crm"]}],
}


def write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def rule(**changes: Any) -> dict[str, Any]:
    return {**VALID, "rules": [{**VALID["rules"][0], **changes}]}


@pytest.mark.parametrize(
    ("data", "key", "message"),
    [
        ({**VALID, "id": None}, "id", "is required"),
        ({**VALID, "version": None}, "version", "is required"),
        ({**VALID, "version": True}, "version", "non-empty string or an integer"),
        ({**VALID, "colour": "red"}, "colour", "is not a known setting"),
        (rule(agents=[]), "rules[0].agents", "must not be empty"),
        (rule(agents=["not-an-id"]), "rules[0].agents[0]", "not a valid SPIFFE ID"),
        (rule(agents=["spiffe://example.org/a*b"]), "rules[0].agents[0]", "final '/*'"),
        (rule(tools=["Bad Tool"]), "rules[0].tools[0]", "not a valid tool name"),
        (rule(effect="maybe"), "rules[0].effect", "must be one of"),
        (rule(mode="sometimes"), "rules[0].mode", "must be one of"),
        (rule(max_ttl_seconds=301), "rules[0].max_ttl_seconds", "at most 300"),
        (rule(max_ttl_seconds=0), "rules[0].max_ttl_seconds", "at least 1"),
        (rule(user={"tier": "gold"}), "rules[0].user.tier", "is not a known setting"),
        (
            rule(rate_limits=[{"per": ["planet"], "limit": 1, "window_seconds": 1}]),
            "rules[0].rate_limits[0].per[0]",
            "must be one of",
        ),
        (
            rule(rate_limits=[{"per": ["user"], "limit": 0, "window_seconds": 60}]),
            "rules[0].rate_limits[0].limit",
            "at least 1",
        ),
        (
            rule(time_windows=[{"start": "25:00", "end": "26:00"}]),
            "rules[0].time_windows[0].start",
            "invalid value",
        ),
        (
            rule(time_windows=[{"start": "08:00", "end": "09:00", "timezone": "Mars/Olympus"}]),
            "rules[0].time_windows[0].timezone",
            "unknown time zone",
        ),
        (
            {**VALID, "rules": [VALID["rules"][0], VALID["rules"][0]]},
            "rules[1].id",
            "duplicates rule id",
        ),
    ],
)
def test_invalid_policy_names_file_and_key(
    tmp_path: Path, data: dict[str, Any], key: str, message: str
) -> None:
    """Each mistake is a ConfigError naming the file and the dotted key."""
    path = write(tmp_path / "policy.yaml", data)
    with pytest.raises(ConfigError) as excinfo:
        load_policy(path)
    text = str(excinfo.value)
    assert text.startswith(f"{path}: {key}: "), text
    assert message in text


def test_tools_are_checked_against_the_catalogue(tmp_path: Path) -> None:
    """With the configured tools known, naming another tool is an error."""
    path = write(tmp_path / "policy.yaml", VALID)
    load_policy(path, known_tools=frozenset({"crm"}))
    with pytest.raises(
        ConfigError, match=r"names tool 'crm', which the configuration does not define"
    ):
        load_policy(path, known_tools=frozenset({"mail"}))


def test_version_changes_with_content(tmp_path: Path) -> None:
    """Same declared version, different content: different version strings."""
    a = load_policy(write(tmp_path / "a.yaml", VALID))
    b = load_policy(write(tmp_path / "b.yaml", rule(tools=["crm", "mail"])))
    assert a.declared_version == b.declared_version == "1"
    assert a.version != b.version


def _bump_mtime(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


async def test_reload_swaps_valid_policy_and_keeps_old_on_error(
    tmp_path: Path, clock: ManualClock
) -> None:
    """A change is seen when the watcher's clock moves; an invalid one keeps the running policy."""
    path = write(tmp_path / "policy.yaml", VALID)
    live = ReloadingPolicy(
        path, known_tools=frozenset({"crm", "mail"}), tool_scopes={}, clock=clock, watch_seconds=5
    )
    await live.start()
    try:
        first = live.policy.version
        write(path, {**VALID, "version": 2})
        _bump_mtime(path)
        await asyncio.sleep(0.2)
        assert live.policy.version == first  # the watcher sleeps on the injected clock
        clock.advance(5)
        await eventually(lambda: live.policy.declared_version == "2")
        second = live.policy.version
        assert second != first

        path.write_text("rules: [this is: not valid")
        _bump_mtime(path)
        clock.advance(5)
        await eventually(lambda: live.last_error is not None)
        assert live.policy.version == second
        assert "not valid YAML" in str(live.last_error)

        write(path, rule(tools=["unknown_tool"]))
        assert live.reload() is False
        assert "unknown_tool" in str(live.last_error)
        assert live.policy.version == second
    finally:
        await live.close()
