"""The policy decider contract, run against every engine in `ENGINES`.

The rule engine (`ReloadingPolicy` over a YAML policy file) and the embedded Rego engine
(`RegoPolicy` over a `.rego` module). An engine is
added by appending an `Engine` that writes the same small policy in its own language,
opens the decider, and reloads it the way the broker does (a file change or SIGHUP).

Promises: `decide()` is async and denies by default (an agent no rule names: `allow`
false with the reason `agent_unknown`); an allowed decision carries its id and the
running version, and grants a TTL no longer than requested nor than 300 s; `deny()`
returns a denial with the given reasons and messages under the running version;
`version` is (policy id, version string) and changes when a different file is loaded.
Failure: the rule engine has no backend to lose (it decides in memory); what can fail is
a reload, so: a broken policy file on reload keeps the running policy and its version,
and `decide()` goes on answering without raising.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from broker.domain import AuthMethod, Caller, RequestContext
from broker.policy.config import PolicySettings
from broker.policy.rego import RegoPolicy
from broker.policy.reloader import ReloadingPolicy
from broker.typing import PolicyDecider
from tests.support.clock import ManualClock

ALLOWED = "spiffe://example.org/agent/claims"
STRANGER = "spiffe://example.org/agent/stranger"
TOOLS = {"crm": ("crm:read",), "mail": ("mail:send",)}


@dataclass(frozen=True)
class Engine:
    """How the suite drives one engine.

    Attributes:
        name: The test id.
        write_policy: Write a policy with this id and version allowing `ALLOWED` the
            given tools (nothing else).
        write_broken: Write a file the engine must refuse to load.
        open: Open the decider over a policy file (closed on exit).
        reload: Make a running decider load its file again, as the broker does.
    """

    name: str
    write_policy: Callable[[Path, str, int, Sequence[str]], None]
    write_broken: Callable[[Path], None]
    open: Callable[[Path, ManualClock], AbstractAsyncContextManager[PolicyDecider]]
    reload: Callable[[PolicyDecider], Awaitable[None]]


def _rules_policy(path: Path, policy_id: str, version: int, tools: Sequence[str]) -> None:
    rules = [{"id": "claims", "agents": [ALLOWED], "tools": list(tools)}]
    path.write_text(yaml.safe_dump({"id": policy_id, "version": version, "rules": rules}))


def _rules_broken(path: Path) -> None:
    path.write_text("id: p\nversion: 9\nrules:\n  - id: claims\n    agents: [not-a-spiffe-id]\n")


@asynccontextmanager
async def _rules_open(path: Path, clock: ManualClock) -> AsyncIterator[PolicyDecider]:
    decider = ReloadingPolicy(
        path, known_tools=frozenset(TOOLS), tool_scopes=TOOLS, clock=clock, watch_seconds=2
    )
    await decider.start()
    try:
        yield decider
    finally:
        await decider.close()


async def _rules_reload(decider: PolicyDecider) -> None:
    assert isinstance(decider, ReloadingPolicy)
    await asyncio.to_thread(decider.reload)  # what the file watcher and SIGHUP run


def _rego_policy(path: Path, policy_id: str, version: int, tools: Sequence[str]) -> None:
    allowed = ", ".join(f'"{t}"' for t in tools)
    path.write_text(
        "package broker\n"
        "import rego.v1\n"
        f'policy := {{"id": "{policy_id}", "version": {version}}}\n'
        'default decision := {"allow": false, "reasons": ["agent_unknown"]}\n'
        f'decision := {{"allow": true, "tools": {{t: {{"rule": "claims", "max_ttl": 300}} '
        "| some t in input.tools}} if {\n"
        f'  input.caller.spiffe_id == "{ALLOWED}"\n'
        f"  every t in input.tools {{ t in {{{allowed}}} }}\n"
        "}\n"
    )


def _rego_broken(path: Path) -> None:
    path.write_text("package broker\ndecision := \n")


@asynccontextmanager
async def _rego_open(path: Path, clock: ManualClock) -> AsyncIterator[PolicyDecider]:
    settings = PolicySettings(file=None, engine="rego", module=path, watch_seconds=2)
    decider = RegoPolicy(settings, tool_scopes=TOOLS, clock=clock)
    await decider.start()
    try:
        yield decider
    finally:
        await decider.close()


async def _rego_reload(decider: PolicyDecider) -> None:
    assert isinstance(decider, RegoPolicy)
    await asyncio.to_thread(decider.reload)


ENGINES = [
    Engine("rules", _rules_policy, _rules_broken, _rules_open, _rules_reload),
    Engine("rego", _rego_policy, _rego_broken, _rego_open, _rego_reload),
]


@dataclass
class Running:
    decider: PolicyDecider
    engine: Engine
    path: Path


@pytest.fixture(params=ENGINES, ids=[e.name for e in ENGINES])
async def running(
    request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock
) -> AsyncIterator[Running]:
    """Each engine, running policy `p` version 1 (ALLOWED may use crm)."""
    engine: Engine = request.param
    path = tmp_path / "policy"
    engine.write_policy(path, "p", 1, ["crm"])
    async with engine.open(path, clock) as decider:
        yield Running(decider, engine, path)


def ctx(agent: str, tools: tuple[str, ...] = ("crm",), ttl: int | None = None) -> RequestContext:
    now = datetime.now(UTC)
    caller = Caller(agent, "example.org", AuthMethod.X509_SVID, now + timedelta(hours=1))
    return RequestContext(caller, None, tools, ttl, now, "req-1")


async def test_unknown_agent_is_denied_by_default(running: Running) -> None:
    """decide() is async; an agent no rule names gets allow=False, reason agent_unknown."""
    decision = await running.decider.decide(ctx(STRANGER), "d-unknown")
    assert not decision.allow
    assert "agent_unknown" in decision.reasons
    assert decision.decision_id == "d-unknown"


@pytest.mark.parametrize("requested", [None, 120, 300])
async def test_allowed_ttl_is_bounded(running: Running, requested: int | None) -> None:
    """An allowed decision grants no more than requested and no more than 300 s."""
    decision = await running.decider.decide(ctx(ALLOWED, ttl=requested), "d-allow")
    assert decision.allow
    assert decision.decision_id == "d-allow"
    assert 0 < decision.ttl_granted <= min(requested or 300, 300)
    assert (decision.policy_id, decision.policy_version) == running.decider.version


async def test_deny_carries_reasons_and_the_running_version(running: Running) -> None:
    """deny(): allow=False, the given reasons and messages, under the running version."""
    denial = running.decider.deny("d-pre", ["rate_limited"], ["too many requests"])
    assert not denial.allow
    assert denial.decision_id == "d-pre"
    assert denial.reasons == ("rate_limited",)
    assert denial.messages == ("too many requests",)
    assert (denial.policy_id, denial.policy_version) == running.decider.version


async def test_version_changes_with_a_different_file(running: Running) -> None:
    """Version is (id, version string); loading a different file changes it and decisions."""
    policy_id, version = running.decider.version
    assert policy_id == "p"
    assert isinstance(version, str)
    assert version
    assert not (await running.decider.decide(ctx(ALLOWED, ("mail",)), "d1")).allow
    running.engine.write_policy(running.path, "p", 2, ["crm", "mail"])
    await running.engine.reload(running.decider)
    assert running.decider.version[0] == "p"
    assert running.decider.version[1] != version
    after = await running.decider.decide(ctx(ALLOWED, ("mail",)), "d2")
    assert after.allow
    assert (after.policy_id, after.policy_version) == running.decider.version


async def test_a_broken_file_keeps_the_running_policy(running: Running) -> None:
    """A reload of a broken file keeps the running policy and version; decide() still answers."""
    version = running.decider.version
    running.engine.write_broken(running.path)
    await running.engine.reload(running.decider)
    assert running.decider.version == version
    assert (await running.decider.decide(ctx(ALLOWED), "d-still")).allow
    assert not (await running.decider.decide(ctx(STRANGER), "d-still-no")).allow
