"""The agent registry (CONTRACT section 8): each agent's owner and declared tools.

Entries name an exact SPIFFE ID or a `/*` prefix. The entry describing an agent is its
exact entry, else the longest matching prefix: one dict lookup per path segment of the
caller's ID, so the registry costs the same with 10 or 10,000 agents.
"""

from __future__ import annotations

from collections.abc import Iterable

from broker.policy.model import AgentEntry

__all__ = ["AgentRegistry"]

_SCHEME = "spiffe://"


class AgentRegistry:
    """Finds the registry entry describing an agent."""

    def __init__(self, entries: Iterable[AgentEntry]) -> None:
        """Index the entries (exact IDs and prefixes apart)."""
        self.entries = tuple(entries)
        self._exact = {e.pattern.key: e for e in self.entries if not e.pattern.is_prefix}
        self._prefix = {e.pattern.key: e for e in self.entries if e.pattern.is_prefix}

    def entry_for(self, spiffe_id: str) -> AgentEntry | None:
        """The exact entry of `spiffe_id`, else its longest matching `/*` entry, else None."""
        exact = self._exact.get(spiffe_id)
        if exact is not None or not self._prefix:
            return exact
        slash = spiffe_id.rfind("/")
        while slash >= len(_SCHEME):
            found = self._prefix.get(spiffe_id[: slash + 1])
            if found is not None:
                return found
            slash = spiffe_id.rfind("/", 0, slash)
        return None

    def undeclared(self, spiffe_id: str, tool: str) -> bool:
        """Whether the agent's entry declares tools and `tool` is not among them."""
        entry = self.entry_for(spiffe_id)
        return (
            entry is not None
            and entry.declared_tools is not None
            and tool not in entry.declared_tools
        )
