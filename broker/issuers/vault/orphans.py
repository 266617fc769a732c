"""What Vault holds that the broker's tools could have created: the orphan sweep's view.

A request whose answer the broker never saw (a timeout, a dropped connection, a crash)
may still have been carried out by Vault: a lease, a child token or a wrapping token
that exists for its whole TTL, recorded nowhere. This module lists the candidates and
tells the broker's own from the rest; the reconciler (`broker.vault.reconciler`) decides,
against the state store and a grace period, what to revoke.

- `dynamic` tools: every lease under the tool's path (`LIST sys/leases/lookup/<path>/`).
- `token` tools: token accessors (`LIST auth/token/accessors`) whose metadata carries a
  `decision_id` and a `tool` of type `token` (the broker writes both on each child token).
- `kv` tools: token accessors of response-wrapping tokens created at a tool's secret path.

Ages come from Vault's own clock (issue time and remaining TTL), so no clock skew between
the broker and Vault can make a fresh credential look old.

Both LISTs need `list` and `sudo` on exactly those paths (`k8s/vault/setup.sh` grants
them); without, the sweep logs once which path it may not list and does without.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import hvac
import structlog
from hvac import exceptions as vault_errors

from broker.issuers.vault.config import VaultToolSettings
from broker.vault.client import VaultClient
from broker.vault.reconciler import Leftover

__all__ = ["VaultInventory"]

log = structlog.get_logger(__name__)

ACCESSORS = "auth/token/accessors"
WRAPPING_POLICY = "response-wrapping"


class VaultInventory:
    """Lists and inspects what the vault tools may have left in Vault."""

    def __init__(self, client: VaultClient, tools: Mapping[str, VaultToolSettings]) -> None:
        """Create the inventory for the configured `type: vault` tools.

        Args:
            client: The broker's authenticated Vault client.
            tools: The vault tools by name.
        """
        self._vault = client
        self._prefixes = sorted({t.path for t in tools.values() if t.kind == "dynamic" and t.path})
        self._token_tools = frozenset(n for n, t in tools.items() if t.kind == "token")
        self._wrapped_paths = frozenset(
            f"{t.mount}/data/{t.path}" for t in tools.values() if t.kind == "kv"
        )
        self._refused: set[str] = set()  # paths already reported as not listable

    async def listed(self) -> list[str]:
        """Lease ids under the dynamic tools' paths, and every token accessor if needed.

        Raises:
            Unavailable: Vault cannot be reached.
        """
        found: list[str] = []
        for prefix in self._prefixes:
            keys = await self._list(f"sys/leases/lookup/{prefix}/")
            found += [f"{prefix}/{key}" for key in keys if not key.endswith("/")]
        if self._token_tools or self._wrapped_paths:
            found += await self._list(ACCESSORS)
        return found

    async def inspect(self, credential_id: str) -> Leftover | None:
        """The age of a credential a vault tool could have made; None if not one (or gone).

        Raises:
            Unavailable: Vault cannot be reached.
        """
        if "/" in credential_id:
            return await self._lease(credential_id)
        return await self._accessor(credential_id)

    async def _list(self, path: str) -> list[str]:
        def run(client: hvac.Client) -> list[str] | None:
            try:
                listed = client.list(path)
            except vault_errors.InvalidPath:
                return []
            except vault_errors.Forbidden:
                return None  # answered here: `call` would take a 403 for an expired login
            keys = (listed or {}).get("data", {}).get("keys") or []
            return [str(k) for k in keys]

        keys = await self._vault.call(run, what=f"list {path}")
        if keys is None:
            if path not in self._refused:
                self._refused.add(path)
                log.warning(
                    "the orphan sweep may not list a path: grant the broker's Vault policy "
                    "`list` and `sudo` on it (k8s/vault/setup.sh does)",
                    path=path,
                )
            return []
        return keys

    async def _lease(self, lease_id: str) -> Leftover | None:
        def run(client: hvac.Client) -> dict[str, object] | None:
            try:
                answer = client.write("sys/leases/lookup", lease_id=lease_id)
            except (vault_errors.InvalidRequest, vault_errors.InvalidPath):
                return None  # gone meanwhile
            data = (answer or {}).get("data")
            return data if isinstance(data, dict) else None

        data = await self._vault.call(run, what="look up a lease")
        if data is None:
            return None
        issued = _timestamp(data.get("issue_time"))
        expires = _timestamp(data.get("expire_time"))
        ttl = _number(data.get("ttl"))
        if issued is None or expires is None or ttl is None:
            return None
        return Leftover(lease_id, (expires - issued) - ttl)

    async def _accessor(self, accessor: str) -> Leftover | None:
        def run(client: hvac.Client) -> dict[str, object] | None:
            try:
                answer = client.auth.token.lookup_accessor(accessor)
            except (vault_errors.InvalidRequest, vault_errors.Forbidden):
                return None  # gone meanwhile (Vault answers 403 for an unknown accessor)
            data = (answer or {}).get("data")
            return data if isinstance(data, dict) else None

        data = await self._vault.call(run, what="look up a token accessor")
        if data is None or not self._ours(data):
            return None
        created, ttl = _number(data.get("creation_ttl")), _number(data.get("ttl"))
        if created is None or ttl is None:
            return None
        return Leftover(accessor, created - ttl)

    def _ours(self, token: Mapping[str, object]) -> bool:
        meta = token.get("meta")
        if isinstance(meta, dict) and meta.get("decision_id") and meta.get("tool"):
            return meta["tool"] in self._token_tools
        policies = token.get("policies")
        return policies == [WRAPPING_POLICY] and token.get("path") in self._wrapped_paths


def _timestamp(value: object) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
