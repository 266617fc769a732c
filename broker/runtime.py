"""The running broker's parts, wired from the settings (no HTTP in here).

`open_runtime` opens every long-lived resource in order and closes them in reverse; the
web layer holds the result for the life of the application.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

from broker.audit import LeaseHasher, create_audit_sink
from broker.authn import create_authenticator
from broker.clock import SystemClock
from broker.config.settings import Settings
from broker.context.user_token import UserTokenVerifier
from broker.identity import IdentityError, create_identity_source
from broker.identity.tls import ServerTls
from broker.issuers.jwt import JwtIssuer
from broker.issuers.keys import KeyRing
from broker.issuers.vault import VaultIssuer
from broker.lifecycle import Lifecycle
from broker.metrics import Metrics
from broker.pipeline import Pipeline
from broker.policy.reloader import ReloadingPolicy
from broker.state import create_state_store
from broker.typing import AuditSink, Clock, IdentitySource, Issuer, StateStore
from broker.vault.client import VaultClient
from broker.vault.reconciler import LeaseReconciler

__all__ = ["Runtime", "open_runtime"]


@dataclass(slots=True)
class Runtime:
    """Everything a request needs, opened once per process."""

    settings: Settings
    clock: Clock
    identity: IdentitySource
    tls: ServerTls
    state: StateStore
    audit: AuditSink
    policy: ReloadingPolicy
    keys: KeyRing | None
    jwt_issuer: JwtIssuer | None
    lease_hasher: LeaseHasher
    pipeline: Pipeline
    lifecycle: Lifecycle
    metrics: Metrics
    vault: VaultClient | None = None
    state_ok: bool = True

    async def readiness(self) -> dict[str, bool]:
        """Each dependency's readiness; the broker is ready when all are."""
        self.state_ok = await self.state.ping()
        return {
            "identity": self.identity.ready(),
            "state": self.state_ok,
            "audit": self.audit.ready(),
        }

    def metrics_state(self) -> dict[str, Any]:
        """What /metrics reports about the broker's state (read at scrape time)."""
        state: dict[str, Any] = {
            "checks": {
                "identity": self.identity.ready(),
                "state": self.state_ok,
                "audit": self.audit.ready(),
            },
            "policy_id": self.policy.policy.id,
            "policy_version": self.policy.policy.version,
        }
        with contextlib.suppress(IdentityError):
            state["svid_expiry"] = self.identity.snapshot().svid.not_after.timestamp()
        if self.vault is not None:
            state["vault_breaker_open"] = 1.0 if self.vault.breaker.state == "open" else 0.0
        batches = getattr(self.audit, "batches", None)
        if isinstance(batches, int):
            state["audit_batches"] = float(batches)
        return state


@asynccontextmanager
async def open_runtime(settings: Settings, clock: Clock | None = None) -> AsyncIterator[Runtime]:
    """Open the broker's resources for the life of the process.

    Args:
        settings: The validated configuration.
        clock: The clock (the system clock unless a test injects one).

    Yields:
        The runtime.

    Raises:
        IdentityError: No identity material could be loaded.
        ConfigError: The policy or the signing keys are invalid.
    """
    clock = clock or SystemClock()
    async with AsyncExitStack() as stack:
        identity = create_identity_source(settings, clock)
        await identity.start()
        stack.push_async_callback(identity.close)

        policy = ReloadingPolicy(
            settings.policy.file if settings.policy else None,
            known_tools=frozenset(t.name for t in settings.tools),
            tool_scopes={t.name: t.scopes for t in settings.tools},
            watch_seconds=settings.policy.watch_seconds if settings.policy else 2.0,
        )
        await policy.start()
        stack.push_async_callback(policy.close)

        state = create_state_store(settings, clock)
        await state.start()
        stack.push_async_callback(state.close)

        audit = create_audit_sink(settings, clock)
        await audit.start()
        stack.push_async_callback(audit.close)

        issuers: dict[str, Issuer] = {}
        keys: KeyRing | None = None
        jwt_issuer: JwtIssuer | None = None
        if settings.jwt_issuer is not None:
            keys = KeyRing(settings.jwt_issuer, clock)
            keys.load()
            await keys.start()
            stack.push_async_callback(keys.close)
            jwt_issuer = JwtIssuer(settings.issuer_url, keys, clock)
            issuers["jwt"] = jwt_issuer

        lease_hasher = LeaseHasher.from_settings(settings)
        vault: VaultClient | None = None
        if settings.vault is not None:
            vault = VaultClient(settings.vault, identity, clock)
            await vault.start()
            stack.push_async_callback(vault.close)
            issuers["vault"] = VaultIssuer(vault, state, lease_hasher, clock)
            reconciler = LeaseReconciler(
                issuers["vault"], state, clock, settings.vault.reconcile_seconds
            )
            await reconciler.start()
            stack.push_async_callback(reconciler.close)

        user_tokens = UserTokenVerifier(settings.user_token_issuers, clock)
        await user_tokens.start()
        stack.push_async_callback(user_tokens.close)

        metrics = Metrics()
        pipeline = Pipeline(
            metrics=metrics,
            settings=settings,
            clock=clock,
            authenticator=create_authenticator(settings, identity, clock),
            user_tokens=user_tokens,
            policy=policy,
            issuers=issuers,
            state=state,
            audit=audit,
            jwt_issuer=jwt_issuer,
        )
        runtime = Runtime(
            settings=settings,
            clock=clock,
            identity=identity,
            tls=ServerTls(identity),
            state=state,
            audit=audit,
            policy=policy,
            keys=keys,
            jwt_issuer=jwt_issuer,
            lease_hasher=lease_hasher,
            pipeline=pipeline,
            lifecycle=Lifecycle(
                settings=settings,
                clock=clock,
                state=state,
                audit=audit,
                issuers=issuers,
                jwt_issuer=jwt_issuer,
                lease_hasher=lease_hasher,
            ),
            vault=vault,
            metrics=metrics,
        )
        metrics.watch(runtime.metrics_state)
        yield runtime
