"""The rule engine as the broker's `PolicyDecider`: the policy file, reloaded when it changes.

Loaded at start-up, reloaded on file change or SIGHUP, validated first: a reload that
fails validation keeps the running policy and logs why; the broker never runs without a
valid policy and never half-applies one.
"""

from __future__ import annotations

import asyncio
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from broker.domain import Decision, RequestContext
from broker.errors import ConfigError
from broker.policy.engine import PolicyEngine
from broker.policy.isolated import load_policy_file
from broker.policy.model import Policy
from broker.tasks import stop_task
from broker.typing import Clock

__all__ = ["NO_POLICY", "FollowsFiles", "LoadListener", "PolicyVersion", "ReloadingPolicy"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class PolicyVersion:
    """A policy version that went into force (what `policy.loaded` records and keeps).

    Attributes:
        id: The policy id.
        version: The version string (declared version plus short hash).
        content_hash: SHA-256 of the content, hex.
        raw: The content (None when the file changed while it was being loaded).
        suffix: The kind of content, as a file suffix (`yaml`, `rego`, `json`).
    """

    id: str
    version: str
    content_hash: str
    raw: bytes | None
    suffix: str = "yaml"


LoadListener = Callable[[PolicyVersion], Awaitable[None]]

NO_POLICY = Policy(id="none", declared_version="0", content_hash="0" * 64, rules=())


class FollowsFiles(ABC):
    """What every file-backed `PolicyDecider` shares: watching, reloading, notifying.

    A subclass sets `_clock`, `_watch_seconds`, `_stamp` (from `_stat()`), `_task`,
    `_reloads` and `_listeners`, and implements `reload`, `_loaded` and `_stat`.
    """

    _clock: Clock
    _watch_seconds: float
    _stamp: object
    _task: asyncio.Task[None] | None
    _reloads: set[asyncio.Task[None]]
    _listeners: list[LoadListener]

    @abstractmethod
    def reload(self) -> bool:
        """Load the files again (blocking); whether a new policy is now running."""

    @abstractmethod
    def _loaded(self) -> PolicyVersion:
        """The running policy's version and content."""

    @abstractmethod
    def _stat(self) -> object:
        """What changes when the files change (modification times and sizes)."""

    def _watching(self) -> bool:
        return True

    async def subscribe(self, listener: LoadListener) -> None:
        """Call `listener` now with the running policy's version, then after each reload."""
        self._listeners.append(listener)
        await listener(self._loaded())

    async def reload_async(self) -> bool:
        """`reload` off the event loop, then tell the listeners about a new policy."""
        changed = await asyncio.to_thread(self.reload)
        if changed:
            for listener in self._listeners:
                await listener(self._loaded())
        return changed

    async def _reload_task(self) -> None:
        await self.reload_async()

    def schedule_reload(self) -> None:
        """Reload soon (the SIGHUP handler: a plain callback on the event loop)."""
        task = asyncio.get_running_loop().create_task(self._reload_task())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def start(self) -> None:
        """Watch the files for changes."""
        if self._watching():
            self._task = asyncio.create_task(self._watch(), name="policy-watch")

    async def _watch(self) -> None:
        while True:
            await self._clock.sleep(self._watch_seconds)
            if self._stat() != self._stamp:
                await self.reload_async()

    async def close(self) -> None:
        """Stop watching."""
        await stop_task(self._task)
        self._task = None
        for task in list(self._reloads):
            await stop_task(task)


class ReloadingPolicy(FollowsFiles):
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
        self.raw: bytes | None = None
        if path is None:
            log.warning("no policy configured: every request is denied")
            policy = NO_POLICY
        else:
            policy = load_policy_file(path, known_tools=known_tools)
            self.raw = self._content_of(policy)
        self._engine = PolicyEngine(policy, self._scopes)
        self._task: asyncio.Task[None] | None = None
        self._reloads: set[asyncio.Task[None]] = set()
        self._listeners: list[LoadListener] = []
        self.last_error: str | None = None
        log.info("policy loaded", policy_id=self.policy.id, version=self.policy.version)

    @property
    def policy(self) -> Policy:
        """The running policy."""
        return self._engine.policy

    @property
    def engine(self) -> PolicyEngine:
        """The running rule engine (replaced, never changed, on reload)."""
        return self._engine

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

    def _content_of(self, policy: Policy) -> bytes | None:
        """The file's bytes, if they are still those `policy` was loaded from."""
        if self._path is None:
            return None
        try:
            raw = self._path.read_bytes()
        except OSError:
            return None
        # Changed since it was parsed: the watcher loads the newer file on its next tick.
        return raw if hashlib.sha256(raw).hexdigest() == policy.content_hash else None

    def _loaded(self) -> PolicyVersion:
        policy = self.policy
        return PolicyVersion(policy.id, policy.version, policy.content_hash, self.raw)

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
        self.raw = self._content_of(policy)
        self._engine = PolicyEngine(policy, self._scopes)
        log.info("policy reloaded", policy_id=policy.id, version=policy.version)
        return True

    def _watching(self) -> bool:
        return self._path is not None
