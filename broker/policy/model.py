"""The policy as data: rules binding agent SPIFFE ID patterns to tools, under conditions."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, time
from enum import StrEnum
from zoneinfo import ZoneInfo

from broker.domain import Limit

__all__ = [
    "AgentEntry",
    "AgentPattern",
    "Effect",
    "Limit",
    "Mode",
    "Policy",
    "Rule",
    "TimeWindow",
    "UserCondition",
]

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class Effect(StrEnum):
    """What a matching rule does."""

    ALLOW = "allow"
    DENY = "deny"


class Mode(StrEnum):
    """Whether a rule's denials are enforced or only recorded (`shadow: true` is `dry_run`)."""

    ENFORCE = "enforce"
    DRY_RUN = "dry_run"


@dataclass(frozen=True, slots=True)
class AgentPattern:
    """An exact SPIFFE ID, or a prefix ending in `/*` (everything below that path)."""

    text: str

    @property
    def is_prefix(self) -> bool:
        """Whether this pattern matches a whole subtree."""
        return self.text.endswith("/*")

    @property
    def key(self) -> str:
        """The index key: the exact ID, or the prefix up to and including the last `/`."""
        return self.text[:-1] if self.is_prefix else self.text


@dataclass(frozen=True, slots=True)
class UserCondition:
    """Conditions on the end user; absent lists mean "any"."""

    required: bool = False
    issuers: frozenset[str] | None = None
    tiers: frozenset[str] | None = None
    groups_any: frozenset[str] | None = None
    groups_all: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """Days and hours (in a time zone) during which a rule applies."""

    days: frozenset[int]
    start: time
    end: time
    timezone: str

    def contains(self, when: datetime) -> bool:
        """Whether `when` (aware) falls in the window (an end before start wraps midnight)."""
        local = when.astimezone(ZoneInfo(self.timezone))
        now = local.time()
        if self.start <= self.end:
            return local.weekday() in self.days and self.start <= now < self.end
        # Overnight window: the part after midnight belongs to the previous day.
        if now >= self.start:
            return local.weekday() in self.days
        return (local.weekday() - 1) % 7 in self.days and now < self.end


@dataclass(frozen=True, slots=True)
class Rule:
    """One policy rule."""

    id: str
    index: int
    agents: tuple[AgentPattern, ...]
    tools: frozenset[str]
    effect: Effect = Effect.ALLOW
    mode: Mode = Mode.ENFORCE
    description: str = ""
    user: UserCondition = field(default_factory=UserCondition)
    max_ttl_seconds: int | None = None
    limits: tuple[Limit, ...] = ()
    time_windows: tuple[TimeWindow, ...] = ()
    max_delegation_depth: int | None = None
    scopes: frozenset[str] | None = None
    require_approval: bool = False

    @property
    def shadow(self) -> bool:
        """Whether the rule only records what it would deny (`shadow: true`)."""
        return self.mode is Mode.DRY_RUN

    def covers(self, tool: str) -> bool:
        """Whether the rule speaks about `tool`."""
        return "*" in self.tools or tool in self.tools


@dataclass(frozen=True, slots=True)
class AgentEntry:
    """An agent's registry entry (CONTRACT section 8): who owns it and what it may ask for.

    Attributes:
        pattern: The exact SPIFFE ID, or a `/*` prefix, the entry describes.
        owner_team: The owning team.
        owner_contact: How to reach the owner.
        description: What the agent does.
        environment: Where it runs (free text: `production`, `staging`, ...).
        version: The agent's own version (free text).
        declared_tools: The tools the agent declares it uses; None when it declares none
            (then the registry does not restrict it).
    """

    pattern: AgentPattern
    owner_team: str | None = None
    owner_contact: str | None = None
    description: str = ""
    environment: str | None = None
    version: str | None = None
    declared_tools: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class Policy:
    """A validated policy: its identity (id, version) and its rules in file order."""

    id: str
    declared_version: str
    content_hash: str
    rules: tuple[Rule, ...]
    tool_max_ttl: dict[str, int] = field(default_factory=dict)
    default_max_ttl: int = 300
    default_max_delegation_depth: int = 2
    agents: tuple[AgentEntry, ...] = ()

    @property
    def version(self) -> str:
        """Declared version plus content hash: two different files never share a version."""
        return f"{self.declared_version}+sha256:{self.content_hash[:12]}"

    @property
    def tools(self) -> frozenset[str]:
        """Every tool the policy names (for cross-checks against the tool catalogue)."""
        named = {t for rule in self.rules for t in rule.tools if t != "*"}
        declared = {t for a in self.agents for t in a.declared_tools or ()}
        return frozenset(named | declared | set(self.tool_max_ttl))
