"""`broker agents list` and `broker agents show SPIFFE_ID`: the registry and live credentials.

The agents come from the configuration's policy (the YAML file's `agents:`, or with the
Rego engine the `agents` of its data document), the live credentials from its state
store, opened through `broker.state.STATE_STORES` like the broker opens it (only read
here; SQLite's WAL lets a running broker go on writing meanwhile).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from broker.clock import SystemClock
from broker.config.settings import Settings, load_settings
from broker.errors import ConfigError, Unavailable
from broker.governance.directory import AgentSummary, describe_agent, list_agents
from broker.policy.engine import PolicyEngine
from broker.policy.isolated import load_policy_file
from broker.spiffe_id import parse_spiffe_id
from broker.state import STATE_STORES

__all__ = ["add_commands"]


def add_commands(commands: argparse._SubParsersAction[Any]) -> None:
    """Register `broker agents`."""
    agents = commands.add_parser("agents", help="the agent registry and live credentials")
    sub = agents.add_subparsers(dest="agents_command", required=True, parser_class=type(agents))
    listing = sub.add_parser("list", help="every agent the policy knows")
    listing.add_argument("--config", type=Path, required=True, metavar="FILE")
    listing.add_argument("--json", action="store_true", help="one JSON document")
    listing.set_defaults(run=_list)
    show = sub.add_parser("show", help="one agent: registry entry, rules, live credentials")
    show.add_argument("spiffe_id")
    show.add_argument("--config", type=Path, required=True, metavar="FILE")
    show.set_defaults(run=_show)


def _engine(settings: Settings) -> PolicyEngine:
    known = frozenset(t.name for t in settings.tools)
    if settings.policy is not None and settings.policy.engine == "rego":
        from broker.policy.rego import load_rego  # noqa: PLC0415 - an optional extra

        return PolicyEngine(load_rego(settings.policy, known).policy)
    if settings.policy is None or settings.policy.file is None:
        raise ConfigError("the configuration names no policy (the registry is there)")
    policy = load_policy_file(settings.policy.file, known_tools=known)
    return PolicyEngine(policy, {t.name: t.scopes for t in settings.tools})


async def _with_store(settings: Settings, spiffe_id: str | None) -> list[AgentSummary]:
    engine = _engine(settings)
    state = STATE_STORES.get(settings.state.backend).build(settings.state.options, SystemClock())
    await state.start()
    try:
        if spiffe_id is None:
            return await list_agents(engine, state)
        return [await describe_agent(engine, state, spiffe_id)]
    finally:
        await state.close()


def _run(settings: Settings, spiffe_id: str | None) -> list[AgentSummary]:
    try:
        return asyncio.run(_with_store(settings, spiffe_id))
    except Unavailable as exc:
        raise OSError(f"state store unavailable: {exc.detail}") from None


def _list(args: argparse.Namespace) -> int:
    agents = _run(load_settings(args.config), None)
    if args.json:
        print(json.dumps({"agents": [a.to_json() for a in agents]}, indent=2))  # noqa: T201
        return 0
    print(f"{'SPIFFE ID':<50} {'OWNER':<16} {'ENV':<12} {'LIVE':>5}  LAST ISSUED")  # noqa: T201
    for agent in agents:
        entry = agent.entry
        owner = (entry.owner_team if entry else None) or "-"
        env = (entry.environment if entry else None) or "-"
        live = "-" if agent.live_credentials is None else str(agent.live_credentials)
        last = agent.to_json()["last_issued_at"] or "-"
        print(f"{agent.spiffe_id:<50} {owner:<16} {env:<12} {live:>5}  {last}")  # noqa: T201
    return 0


def _show(args: argparse.Namespace) -> int:
    try:
        parse_spiffe_id(args.spiffe_id)
    except ValueError as exc:
        raise ConfigError(f"{args.spiffe_id!r}: {exc}") from None
    (agent,) = _run(load_settings(args.config), args.spiffe_id)
    print(json.dumps(agent.to_json(), indent=2))  # noqa: T201
    return 0
