"""The running broker's parts, wired from the settings (no HTTP in here).

`open_runtime` opens every long-lived resource in order and closes them in reverse;
issuers and the state store are found by kind in their registries. The web layer holds
the result for the life of the application and hands each handler only the service it
needs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from broker.audit import LeaseHasher, create_audit_sink, events
from broker.audit.aggregate import UnparsedFailures
from broker.authn import create_authenticator
from broker.clock import SystemClock
from broker.config.settings import Settings, ToolSettings
from broker.context.builder import ContextBuilder
from broker.context.user_token import UserTokenVerifier
from broker.errors import ConfigError, Unavailable
from broker.governance.archive import PolicyArchive, archive_dir_for
from broker.governance.directory import AgentDirectory
from broker.governance.webhook import ApprovalWebhook
from broker.identity import IdentityError, create_identity_source
from broker.identity.tls import ServerTls
from broker.issuers import ISSUERS
from broker.issuers.base import IssuerDeps, IssuerParts
from broker.lifecycle import Introspection, Revocation
from broker.limits import Limits
from broker.metrics import Metrics
from broker.pipeline import Pipeline, ReplayGuard
from broker.policy.reloader import LoadListener, PolicyVersion, ReloadingPolicy
from broker.state import STATE_STORES
from broker.tracing import Tracer
from broker.typing import (
    AuditSink,
    Clock,
    IdentitySource,
    Issuer,
    StateStore,
    TokenVerifier,
)

if TYPE_CHECKING:
    from broker.policy.rego import RegoPolicy

__all__ = ["Runtime", "ToolCatalogue", "open_runtime"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class ToolCatalogue:
    """The configured tools, and which of them token exchange may return."""

    tools: Mapping[str, ToolSettings]
    exchangeable: frozenset[str]

    @property
    def names(self) -> frozenset[str]:
        """Every tool name."""
        return frozenset(self.tools)

    def find(self, value: str) -> ToolSettings | None:
        """The tool named `value`, or whose audience URI is `value`."""
        return self.tools.get(value) or next(
            (t for t in self.tools.values() if t.audience == value), None
        )


@dataclass(slots=True)
class Runtime:
    """Everything a request needs, opened once per process."""

    settings: Settings
    clock: Clock
    identity: IdentitySource
    tls: ServerTls
    state: StateStore
    audit: AuditSink
    policy: ReloadingPolicy | RegoPolicy
    tokens: TokenVerifier | None
    issuers: Mapping[str, Issuer]
    catalogue: ToolCatalogue
    pipeline: Pipeline
    introspection: Introspection
    revocation: Revocation
    agents: AgentDirectory
    metrics: Metrics
    tracer: Tracer
    gauges: Mapping[str, tuple[str, Callable[[], float]]] = field(default_factory=dict)
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
        policy_id, version = self.policy.version
        state: dict[str, Any] = {
            "checks": {
                "identity": self.identity.ready(),
                "state": self.state_ok,
                "audit": self.audit.ready(),
            },
            "policy_id": policy_id,
            "policy_version": version,
            "gauges": {name: (doc, read()) for name, (doc, read) in self.gauges.items()},
        }
        with contextlib.suppress(IdentityError):
            state["svid_expiry"] = self.identity.snapshot().svid.not_after.timestamp()
        counters: dict[str, tuple[str, float]] = {}
        batches = getattr(self.audit, "batches", None)
        if isinstance(batches, int):
            counters["broker_audit_batches"] = ("Group-commit batches written (fsyncs)", batches)
        batches = getattr(self.state, "batches", None)
        if isinstance(batches, int):
            counters["broker_state_batches"] = ("State store write transactions", batches)
        state["counters"] = counters
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
        Unavailable: A backend cannot be reached at start-up.
    """
    clock = clock or SystemClock()
    async with AsyncExitStack() as stack:
        tracer = Tracer(settings.tracing)
        stack.callback(tracer.shutdown)
        identity = create_identity_source(settings, clock)
        await identity.start()
        stack.push_async_callback(identity.close)

        policy = _policy_engine(settings, clock)
        await policy.start()
        stack.push_async_callback(policy.close)

        state = STATE_STORES.get(settings.state.backend).build(settings.state.options, clock)
        await state.start()
        stack.push_async_callback(state.close)

        audit = create_audit_sink(settings, clock)
        await audit.start()
        stack.push_async_callback(audit.close)
        await policy.subscribe(_record_policy_loads(settings, audit, clock))

        metrics = Metrics()
        deps = IssuerDeps(
            settings, clock, identity, state, LeaseHasher.from_settings(settings), metrics
        )
        parts: dict[str, IssuerParts] = {}
        for kind, section in settings.issuers.items():
            parts[kind] = await stack.enter_async_context(ISSUERS.get(kind).open(deps, section))
        tokens = next((p.token_verifier for p in parts.values() if p.token_verifier), None)
        issuers = {kind: p.issuer for kind, p in parts.items()}
        tools = {t.name: t for t in settings.tools}
        catalogue = ToolCatalogue(
            tools, frozenset(t.name for t in settings.tools if parts[t.type].exchangeable)
        )

        user_tokens = UserTokenVerifier(settings.user_token_issuers, clock)
        await user_tokens.start()
        stack.push_async_callback(user_tokens.close)

        webhook = None
        if settings.approvals.webhook_url is not None:
            signer = next((p.signer for p in parts.values() if p.signer), None)
            if signer is None:
                raise ConfigError("approvals.webhook needs the jwt issuer (its key signs them)")
            webhook = ApprovalWebhook(
                settings.approvals.webhook_url,
                signer,
                clock,
                settings.approvals.webhook_timeout_seconds,
            )
            stack.push_async_callback(webhook.close)

        authenticator = create_authenticator(settings, identity, clock)
        unparsed = UnparsedFailures(audit, clock)
        await unparsed.start()
        stack.push_async_callback(unparsed.close)
        pipeline = Pipeline(
            clock=clock,
            authenticator=authenticator,
            context=ContextBuilder(
                clock=clock,
                user_tokens=user_tokens,
                state=state,
                authenticator=authenticator,
                tokens=tokens,
                tracer=tracer,
            ),
            policy=policy,
            limits=Limits(state),
            issuers=issuers,
            tools=tools,
            state=state,
            audit=audit,
            replay=ReplayGuard(
                settings.state.jwt_svid_replay_protection,
                settings.authentication.jwt_svid.leeway_seconds,
            ),
            metrics=metrics,
            tracer=tracer,
            unparsed=unparsed,
            admins=settings.admins,
            approval_seconds=settings.approvals.expiry_seconds,
            approver_groups=settings.approvals.approver_groups,
            on_pending=webhook.announce if webhook is not None else None,
        )
        runtime = Runtime(
            settings=settings,
            clock=clock,
            identity=identity,
            tls=ServerTls(identity),
            state=state,
            audit=audit,
            policy=policy,
            tokens=tokens,
            issuers=issuers,
            catalogue=catalogue,
            pipeline=pipeline,
            introspection=Introspection(
                verifier=tokens,
                state=state,
                admins=settings.admins,
                resource_servers=settings.resource_servers,
            ),
            revocation=Revocation(
                clock=clock,
                state=state,
                audit=audit,
                issuers=issuers,
                verifier=tokens,
                admins=settings.admins,
                agent_revocation_seconds=settings.state.agent_revocation_seconds,
            ),
            agents=AgentDirectory(lambda: policy.engine, state, settings.admins),
            metrics=metrics,
            tracer=tracer,
            gauges={name: g for p in parts.values() for name, g in p.gauges.items()},
        )
        metrics.watch(runtime.metrics_state)
        yield runtime


def _policy_engine(settings: Settings, clock: Clock) -> ReloadingPolicy | RegoPolicy:
    """The configured `PolicyDecider`: the rule engine (default) or embedded Rego."""
    scopes = {t.name: t.scopes for t in settings.tools}
    if settings.policy is not None and settings.policy.engine == "rego":
        from broker.policy.rego import RegoPolicy  # noqa: PLC0415 - an optional extra

        return RegoPolicy(settings.policy, tool_scopes=scopes, clock=clock)
    return ReloadingPolicy(
        settings.policy.file if settings.policy else None,
        known_tools=frozenset(t.name for t in settings.tools),
        tool_scopes=scopes,
        clock=clock,
        watch_seconds=settings.policy.watch_seconds if settings.policy else 2.0,
    )


def _record_policy_loads(settings: Settings, audit: AuditSink, clock: Clock) -> LoadListener:
    """Keep each policy version beside the audit log and audit `policy.loaded`.

    With the audit trail on stdout there is no directory to keep versions in: the event
    is still written, without `archived`.
    """
    path = settings.audit.path if settings.audit.sink == "file" else None
    archive = PolicyArchive(archive_dir_for(path)) if path is not None else None

    async def loaded(policy: PolicyVersion) -> None:
        archived = None
        if archive is not None and policy.raw is not None:
            try:
                archived = (await asyncio.to_thread(archive.keep, policy.raw, policy.suffix)).name
            except OSError as exc:
                log.warning("could not keep the policy version", reason=str(exc))
        # A failure to audit is not fatal here: the policy is already in force, and the
        # sink's own health check reports the sink.
        with contextlib.suppress(Unavailable):
            await audit.write(
                events.policy_loaded(
                    policy_id=policy.id,
                    version=policy.version,
                    content_hash=policy.content_hash,
                    ts=clock.now(),
                    archived=archived,
                )
            )

    return loaded
