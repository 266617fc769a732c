"""Issuers opened the way the runtime opens them (their factory), and requests to feed them."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from broker.audit import LeaseHasher
from broker.config.settings import Settings
from broker.domain import AuthMethod, Caller, Decision, RequestContext, ToolGrant
from broker.identity.files import FilesIdentitySource
from broker.issuers import ISSUERS
from broker.issuers.base import IssuerDeps, IssueRequest, IssuerParts
from broker.metrics import Metrics
from broker.state.sqlite import SqliteStateStore
from broker.typing import Clock, StateStore

AGENT = "spiffe://example.org/agent/contract"


@dataclass
class OpenedIssuer:
    parts: IssuerParts
    state: StateStore
    settings: Settings


@asynccontextmanager
async def open_issuer(
    kind: str, settings: Settings, clock: Clock, workdir: Path
) -> AsyncIterator[OpenedIssuer]:
    """Open issuer `kind` through its registered factory, with a real (SQLite) state store."""
    async with AsyncExitStack() as stack:
        identity = FilesIdentitySource(settings, clock)
        await identity.start()
        stack.push_async_callback(identity.close)
        state = SqliteStateStore(workdir / f"state-{secrets.token_hex(4)}.db", clock)
        await state.start()
        stack.push_async_callback(state.close)
        deps = IssuerDeps(
            settings, clock, identity, state, LeaseHasher(secrets.token_bytes(32)), Metrics()
        )
        factory = ISSUERS.get(kind)
        parts = await stack.enter_async_context(factory.open(deps, settings.issuers[kind]))
        yield OpenedIssuer(parts, state, settings)


def issue_request(settings: Settings, clock: Clock, tool: str, ttl: int) -> IssueRequest:
    """An allowed request of the contract agent for one tool, for `ttl` seconds."""
    now = clock.now()
    tool_settings = settings.tool(tool)
    assert tool_settings is not None, tool
    caller = Caller(AGENT, "example.org", AuthMethod.X509_SVID, now + timedelta(hours=1))
    ctx = RequestContext(caller, None, (tool,), ttl, now, f"req-{secrets.token_hex(4)}")
    grant = ToolGrant(tool, allowed=True, rule_id="contract", max_ttl=300, scopes=("read",))
    decision = Decision(
        decision_id=f"dec-{secrets.token_hex(6)}",
        allow=True,
        policy_id="contract",
        policy_version="1",
        ttl_granted=ttl,
        tools=(grant,),
    )
    return IssueRequest(ctx, decision, grant, tool_settings, ttl)
