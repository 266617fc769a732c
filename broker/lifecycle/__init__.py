"""After issuance: introspection (RFC 7662), revocation of credentials and of agents."""

from __future__ import annotations

from broker.lifecycle.introspection import Introspection
from broker.lifecycle.release import release_at_issuer
from broker.lifecycle.revocation import AgentRevocation, Revocation

__all__ = ["AgentRevocation", "Introspection", "Revocation", "release_at_issuer"]
