"""Reading a policy file into a validated `Policy`; every error names the file and the key."""

from __future__ import annotations

import hashlib
import re
from datetime import time
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from broker.config.reader import Reader, load_yaml_mapping
from broker.constants import MAX_CREDENTIAL_TTL, TOOL_NAME_PATTERN
from broker.policy.model import (
    WEEKDAYS,
    AgentEntry,
    AgentPattern,
    Effect,
    Limit,
    Mode,
    Policy,
    Rule,
    TimeWindow,
    UserCondition,
)
from broker.spiffe_id import parse_spiffe_id, parse_trust_domain

__all__ = ["load_agents", "load_policy"]

_RULE_ID = r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}"
_PER = ("agent", "user", "tool")
MAX_LIMIT = 1_000_000
MAX_WINDOW_SECONDS = 31 * 86400
MAX_RATE_WINDOW_SECONDS = 86400


def load_policy(path: Path, *, known_tools: frozenset[str] | None = None) -> Policy:
    """Load and validate a policy file.

    Args:
        path: The YAML file.
        known_tools: The tool catalogue; when given, the policy may only name these.

    Returns:
        The policy.

    Raises:
        ConfigError: Naming the file and the offending key.
    """
    data, raw = load_yaml_mapping(path, what="policy")
    root = Reader(path, data)
    policy_id = root.string("id", pattern=_RULE_ID)
    version = root.scalar("version")
    root.string("description", "")

    defaults = root.section("defaults")
    default_ttl = defaults.integer(
        "max_ttl_seconds", MAX_CREDENTIAL_TTL, minimum=1, maximum=MAX_CREDENTIAL_TTL
    )
    default_depth = defaults.integer("max_delegation_depth", 2, minimum=0, maximum=8)
    defaults.finish()

    tool_caps: dict[str, int] = {}
    tools = root.section("tools")
    for name in tools.names():
        _check_tool(tools, name, name, known_tools)
        item = tools.section(name)
        tool_caps[name] = item.integer(
            "max_ttl_seconds", default_ttl, minimum=1, maximum=MAX_CREDENTIAL_TTL
        )
        item.finish()

    rules: list[Rule] = []
    seen_ids: set[str] = set()
    for index, item in enumerate(root.sections("rules")):
        rule = _rule(item, index, known_tools)
        if rule.id in seen_ids:
            raise item.error("id", f"duplicates rule id {rule.id!r}")
        seen_ids.add(rule.id)
        rules.append(rule)
    agents = load_agents(root, known_tools)
    root.finish()
    return Policy(
        id=policy_id,
        declared_version=str(version),
        content_hash=hashlib.sha256(raw).hexdigest(),
        rules=tuple(rules),
        tool_max_ttl=tool_caps,
        default_max_ttl=default_ttl,
        default_max_delegation_depth=default_depth,
        agents=agents,
    )


def load_agents(root: Reader, known_tools: frozenset[str] | None) -> tuple[AgentEntry, ...]:
    """The agent registry: the `agents` list of a policy (YAML file or Rego data document).

    Raises:
        ConfigError: Naming the file and the offending key.
    """
    agents: list[AgentEntry] = []
    seen: set[str] = set()
    for item in root.sections("agents"):
        entry = _agent_entry(item, known_tools)
        if entry.pattern.text in seen:
            raise item.error("spiffe_id", f"describes {entry.pattern.text} a second time")
        seen.add(entry.pattern.text)
        agents.append(entry)
    return tuple(agents)


def _check_tool(reader: Reader, key: str, name: str, known: frozenset[str] | None) -> None:
    if name == "*":
        return
    if not re.fullmatch(TOOL_NAME_PATTERN, name):
        raise reader.error(key, f"is not a valid tool name ({TOOL_NAME_PATTERN})")
    if known is not None and name not in known:
        raise reader.error(key, f"names tool {name!r}, which the configuration does not define")


def _agent_pattern(reader: Reader, key: str, value: str) -> AgentPattern:
    if value.endswith("/*"):
        base = value[:-2]
        try:
            if base.count("/") == 2:  # noqa: PLR2004 - "spiffe://td" + "/*": a whole trust domain
                parse_trust_domain(base)
            else:
                parse_spiffe_id(base)
        except ValueError as exc:
            raise reader.error(key, str(exc)) from None
        return AgentPattern(value)
    if "*" in value:
        raise reader.error(key, "wildcards are only allowed as a final '/*'")
    try:
        parse_spiffe_id(value)
    except ValueError as exc:
        raise reader.error(key, str(exc)) from None
    return AgentPattern(value)


def _agent_entry(item: Reader, known_tools: frozenset[str] | None) -> AgentEntry:
    pattern = _agent_pattern(item, "spiffe_id", item.string("spiffe_id"))
    owner = item.section("owner")
    team, contact = owner.optional_string("team"), owner.optional_string("contact")
    owner.finish()
    declared: frozenset[str] | None = None
    if item.has("declared_tools"):
        names = item.strings("declared_tools")
        for i, name in enumerate(names):
            if name == "*":
                raise item.error(f"declared_tools[{i}]", "must name a tool, not '*'")
            _check_tool(item, f"declared_tools[{i}]", name, known_tools)
        declared = frozenset(names)
    version = item.scalar("version") if item.has("version") else None
    entry = AgentEntry(
        pattern=pattern,
        owner_team=team,
        owner_contact=contact,
        description=item.string("description", ""),
        environment=item.optional_string("environment"),
        version=version,
        declared_tools=declared,
    )
    item.finish()
    return entry


def _rule(item: Reader, index: int, known_tools: frozenset[str] | None) -> Rule:
    rule_id = item.string("id", pattern=_RULE_ID)
    agents = item.strings("agents", non_empty=True)
    patterns = tuple(_agent_pattern(item, f"agents[{i}]", v) for i, v in enumerate(agents))
    tools = item.strings("tools", non_empty=True)
    for i, name in enumerate(tools):
        _check_tool(item, f"tools[{i}]", name, known_tools)
    effect = Effect(item.string("effect", "allow", choices=[e.value for e in Effect]))
    mode = _mode(item)
    scopes = item.strings("scopes", ()) if item.has("scopes") else None
    rule = Rule(
        id=rule_id,
        index=index,
        agents=patterns,
        tools=frozenset(tools),
        effect=effect,
        mode=mode,
        description=item.string("description", ""),
        user=_user(item.section("user")),
        max_ttl_seconds=(
            item.integer("max_ttl_seconds", minimum=1, maximum=MAX_CREDENTIAL_TTL)
            if item.has("max_ttl_seconds")
            else None
        ),
        limits=tuple(_limit(r, "rate") for r in item.sections("rate_limits"))
        + tuple(_limit(r, "budget") for r in item.sections("budgets")),
        time_windows=tuple(_window(w) for w in item.sections("time_windows")),
        max_delegation_depth=(
            item.integer("max_delegation_depth", minimum=0, maximum=8)
            if item.has("max_delegation_depth")
            else None
        ),
        scopes=frozenset(s for v in scopes for s in v.split()) if scopes is not None else None,
        require_approval=item.boolean("require_approval", False),  # noqa: FBT003
    )
    item.finish()
    return rule


def _mode(item: Reader) -> Mode:
    """`shadow: true` (the contract's spelling) or its older alias `mode: dry_run`."""
    mode = Mode(item.string("mode", "enforce", choices=[m.value for m in Mode]))
    if not item.has("shadow"):
        return mode
    shadow = item.boolean("shadow")
    if item.has("mode") and shadow != (mode is Mode.DRY_RUN):
        raise item.error("shadow", f"contradicts mode: {mode.value} (give one of them)")
    return Mode.DRY_RUN if shadow else Mode.ENFORCE


def _user(reader: Reader) -> UserCondition:
    def optional_set(name: str) -> frozenset[str] | None:
        return frozenset(reader.strings(name)) if reader.has(name) else None

    condition = UserCondition(
        required=reader.boolean("required", False),  # noqa: FBT003
        issuers=optional_set("issuers"),
        tiers=optional_set("tiers"),
        groups_any=optional_set("groups_any"),
        groups_all=optional_set("groups_all"),
    )
    reader.finish()
    return condition


def _limit(reader: Reader, kind: str) -> Limit:
    per = reader.strings("per", non_empty=True, choices=_PER)
    if len(set(per)) != len(per):
        raise reader.error("per", "lists an attribute twice")
    window_key = "window_seconds" if kind == "rate" else "period_seconds"
    limit = Limit(
        kind=kind,
        per=tuple(sorted(per)),
        limit=reader.integer("limit", minimum=1, maximum=MAX_LIMIT),
        window_seconds=reader.integer(
            window_key,
            minimum=1,
            maximum=MAX_RATE_WINDOW_SECONDS if kind == "rate" else MAX_WINDOW_SECONDS,
        ),
    )
    reader.finish()
    return limit


def _clock_time(reader: Reader, name: str) -> time:
    value = reader.string(name, pattern=r"([01]\d|2[0-3]):[0-5]\d")
    hours, minutes = value.split(":")
    return time(int(hours), int(minutes))


def _window(reader: Reader) -> TimeWindow:
    days = reader.strings("days", WEEKDAYS, choices=WEEKDAYS, non_empty=True)
    zone = reader.string("timezone", "UTC")
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise reader.error("timezone", f"unknown time zone {zone!r}") from None
    window = TimeWindow(
        days=frozenset(WEEKDAYS.index(d) for d in days),
        start=_clock_time(reader, "start"),
        end=_clock_time(reader, "end"),
        timezone=zone,
    )
    if window.start == window.end:
        raise reader.error("end", "must differ from start")
    reader.finish()
    return window
