"""Tools of `type: vault`: dynamic secrets, child tokens and wrapped KV from Vault/OpenBao."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from broker.config.reader import Reader
from broker.issuers.base import IssuerDeps, IssuerParts, ToolOptions
from broker.issuers.vault.config import VaultToolSettings, parse_vault_tool
from broker.vault.config import VaultSettings, parse_vault

__all__ = ["FACTORY"]


class _Factory:
    kind = "vault"
    section = "vault"

    def parse(self, reader: Reader) -> VaultSettings:
        return parse_vault(reader)

    def parse_tool(self, reader: Reader) -> ToolOptions:
        return ToolOptions(options=parse_vault_tool(reader))

    @asynccontextmanager
    async def open(self, deps: IssuerDeps, settings: object) -> AsyncIterator[IssuerParts]:
        assert isinstance(settings, VaultSettings)
        # hvac (and requests under it) load only for a broker with Vault tools.
        from broker.issuers.vault.issuer import VaultIssuer  # noqa: PLC0415
        from broker.issuers.vault.orphans import VaultInventory  # noqa: PLC0415
        from broker.vault.client import VaultClient  # noqa: PLC0415
        from broker.vault.reconciler import LeaseReconciler, OrphanSweep  # noqa: PLC0415

        client = VaultClient(settings, deps.identity, deps.clock)
        client.observe = lambda seconds: deps.metrics.stage("vault", seconds)
        await client.start()
        try:
            issuer = VaultIssuer(client, deps.state, deps.lease_hasher, deps.clock)
            tools = {
                t.name: t.options
                for t in deps.settings.tools
                if isinstance(t.options, VaultToolSettings)
            }
            orphans = (
                OrphanSweep(
                    VaultInventory(client, tools),
                    client,
                    grace=settings.orphan_grace_seconds,
                    every=settings.orphan_sweep_seconds,
                )
                if settings.orphan_sweep_seconds > 0
                else None
            )
            reconciler = LeaseReconciler(
                issuer, deps.state, deps.clock, settings.reconcile_seconds, orphans=orphans
            )
            await reconciler.start()
            try:
                yield IssuerParts(
                    issuer,
                    gauges={
                        "broker_vault_breaker_open": (
                            "Whether the Vault circuit breaker is open",
                            lambda: 1.0 if client.breaker.state == "open" else 0.0,
                        )
                    },
                )
            finally:
                await reconciler.close()
        finally:
            await client.close()


FACTORY = _Factory()
