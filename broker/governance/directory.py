"""The agents the policy knows, with their live credentials (`GET /v1/admin/agents`, the CLI).

Listed: every registry entry (exact SPIFFE IDs and `/*` patterns), and every exact SPIFFE
ID a rule names without a registry entry (`registered: false`). Live credential counts
and the last issuance come from the state store's `agent_credentials` (live, unrevoked
credentials): a pattern stands for agents the store cannot enumerate, so it has neither.
The last issuance is the latest `issued_at` among the live credentials; the StateStore
keeps nothing older (an earlier issuance is in the audit log).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from broker.clock import rfc3339
from broker.domain import Caller
from broker.errors import Forbidden
from broker.policy.engine import PolicyEngine
from broker.policy.model import AgentEntry
from broker.typing import StateStore

__all__ = ["AgentDirectory", "AgentSummary", "describe_agent", "list_agents"]


@dataclass(frozen=True, slots=True)
class AgentSummary:
    """One agent (or pattern) as the directory shows it."""

    spiffe_id: str
    entry: AgentEntry | None
    rules: tuple[str, ...]
    live_credentials: int | None
    last_issued_at: float | None

    def to_json(self) -> dict[str, object]:
        """The JSON object the API and `broker agents` print."""
        entry = self.entry
        out: dict[str, object] = {
            "spiffe_id": self.spiffe_id,
            "registered": entry is not None,
            "pattern": self.spiffe_id.endswith("/*"),
            "rules": list(self.rules),
            "live_credentials": self.live_credentials,
            "last_issued_at": (
                rfc3339(self.last_issued_at) if self.last_issued_at is not None else None
            ),
        }
        if entry is not None:
            out["registry_entry"] = entry.pattern.text
            out["owner"] = {"team": entry.owner_team, "contact": entry.owner_contact}
            out["description"] = entry.description
            out["environment"] = entry.environment
            out["version"] = entry.version
            out["declared_tools"] = (
                sorted(entry.declared_tools) if entry.declared_tools is not None else None
            )
        return out


async def _live(state: StateStore, spiffe_id: str) -> tuple[int, float | None]:
    live = [r for r in await state.agent_credentials(spiffe_id) if not r.revoked]
    return len(live), max((r.issued_at for r in live), default=None)


async def describe_agent(engine: PolicyEngine, state: StateStore, spiffe_id: str) -> AgentSummary:
    """One agent: its registry entry (exact or by pattern), matching rules, live credentials.

    Raises:
        Unavailable: The state store failed.
    """
    count, last = await _live(state, spiffe_id)
    return AgentSummary(
        spiffe_id,
        engine.registry.entry_for(spiffe_id),
        tuple(r.id for r in engine.rules_for(spiffe_id)),
        count,
        last,
    )


async def list_agents(engine: PolicyEngine, state: StateStore) -> list[AgentSummary]:
    """Every registry entry and every exact SPIFFE ID a rule names, sorted by ID.

    Raises:
        Unavailable: The state store failed.
    """
    policy = engine.policy
    ids = {e.pattern.text for e in policy.agents}
    ids |= {p.text for rule in policy.rules for p in rule.agents if not p.is_prefix}
    out: list[AgentSummary] = []
    for spiffe_id in sorted(ids):
        if spiffe_id.endswith("/*"):
            entry = next(e for e in policy.agents if e.pattern.text == spiffe_id)
            rules = tuple(r.id for r in policy.rules if entry.pattern in r.agents)
            out.append(AgentSummary(spiffe_id, entry, rules, None, None))
        else:
            out.append(await describe_agent(engine, state, spiffe_id))
    return out


class AgentDirectory:
    """The admin API's view of the agents (administrators only)."""

    def __init__(
        self, engine: Callable[[], PolicyEngine], state: StateStore, admins: frozenset[str]
    ) -> None:
        """Args: the running engine (read per call: it follows reloads), the store, admins."""
        self._engine = engine
        self._state = state
        self._admins = admins

    async def list(self, caller: Caller) -> list[AgentSummary]:
        """Every agent the policy knows.

        Raises:
            Forbidden: The caller is not an administrator.
            Unavailable: The state store failed.
        """
        if caller.spiffe_id not in self._admins:
            raise Forbidden("only an administrator may list agents")
        return await list_agents(self._engine(), self._state)
