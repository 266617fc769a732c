"""The rule engine as the broker's `PolicyDecider`: the policy file, reloaded when it changes.

Loaded at start-up, reloaded on file change or SIGHUP, validated first: a reload that
fails validation keeps the running policy and logs why; the broker never runs without a
valid policy and never half-applies one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path

import structlog

from broker.domain import Decision, RequestContext
from broker.errors import ConfigError
from broker.policy.engine import PolicyEngine
from broker.policy.isolated import load_policy_file
from broker.policy.model import Policy
from broker.tasks import stop_task
from broker.typing import Clock

__all__ = ["ReloadingPolicy"]

log = structlog.get_logger(__name__)

NO_POLICY = Policy(id="none", declared_version="0", content_hash="0" * 64, rules=())


class ReloadingPolicy:
    """A `PolicyDecider`: the rule engine over the policy file, following the file."""

    def __init__(
        self,
        path: Path | None,
        *,
        known_tools: frozenset[str],
        tool_scopes: Mapping[str, Sequence[str]],
        clock: Clock,
        watch_seconds: float = 2.0,
    ) -> None:
        """Load the policy.

        Raises:
            ConfigError: The policy file is invalid (the broker must not start).
        """
        self._path = path
        self._known = known_tools
        self._scopes = dict(tool_scopes)
        self._clock = clock
        self._watch_seconds = watch_seconds
        self._stamp = self._stat()
        if path is None:
            log.warning("no policy configured: every request is denied")
            policy = NO_POLICY
        else:
            policy = load_policy_file(path, known_tools=known_tools)
        self._engine = PolicyEngine(policy, self._scopes)
        self._task: asyncio.Task[None] | None = None
        self.last_error: str | None = None
        log.info("policy loaded", policy_id=self.policy.id, version=self.policy.version)

    @property
    def policy(self) -> Policy:
        """The running policy."""
        return self._engine.policy

    @property
    def version(self) -> tuple[str, str]:
        """The running policy's id and version."""
        return self.policy.id, self.policy.version

    async def decide(self, ctx: RequestContext, decision_id: str) -> Decision:
        """Decide with the running policy (in memory: no I/O, never raises)."""
        return self._engine.decide(ctx, decision_id)

    def deny(self, decision_id: str, reasons: Sequence[str], messages: Sequence[str]) -> Decision:
        """A denial under the running policy."""
        return self._engine.deny(decision_id, reasons, messages)

    def _stat(self) -> tuple[int, int] | None:
        if self._path is None:
            return None
        try:
            st = self._path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def reload(self) -> bool:
        """Load the file again; keep the running policy if it is invalid.

        Returns:
            Whether a new policy is now running.
        """
        self._stamp = self._stat()
        if self._path is None:
            return False
        try:
            policy = load_policy_file(self._path, known_tools=self._known)
        except ConfigError as exc:
            self.last_error = str(exc)
            log.error(  # noqa: TRY400 - the message is the reason; no traceback wanted
                "policy reload rejected; keeping the running policy",
                reason=str(exc),
                running_version=self.policy.version,
            )
            return False
        self.last_error = None
        if policy.version == self.policy.version:
            return False
        self._engine = PolicyEngine(policy, self._scopes)
        log.info("policy reloaded", policy_id=policy.id, version=policy.version)
        return True

    async def start(self) -> None:
        """Watch the file for changes."""
        if self._path is None:
            return
        self._task = asyncio.create_task(self._watch(), name="policy-watch")

    async def _watch(self) -> None:
        while True:
            await self._clock.sleep(self._watch_seconds)
            if self._stat() != self._stamp:
                await asyncio.to_thread(self.reload)

    async def close(self) -> None:
        """Stop watching."""
        await stop_task(self._task)
        self._task = None
