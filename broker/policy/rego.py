"""The Rego engine as the broker's `PolicyDecider` (embedded rego-cpp, from the `regopy` wheel).

`policy: {engine: rego, module: FILE | bundle: DIR, query: data.broker.decision}`.
The module(s) and data document are compiled once per load into a bundle with the query
as its entrypoint (`rego_program`); each request is one input document, one entrypoint
query and one small JSON result (`rego_decisions`, through rego-cpp's C API:
`rego_cpp`), or the result remembered for an input that agrees on every field the
policy reads (`rego_reads`). The files are watched and reloaded like the rule engine's,
validated first (a module that does not compile, or a malformed registry, keeps the
running policy).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path

import structlog

from broker.domain import Decision, RequestContext, ShadowDenial
from broker.errors import ConfigError
from broker.policy.config import PolicySettings
from broker.policy.engine import PolicyEngine
from broker.policy.rego_decisions import RegoDecisions, input_document
from broker.policy.rego_program import RegoProgram, compile_rego, read_sources
from broker.policy.reloader import FollowsFiles, LoadListener, PolicyVersion
from broker.typing import Clock

__all__ = ["RegoPolicy", "RegoProgram", "input_document", "load_rego"]

log = structlog.get_logger(__name__)


def load_rego(settings: PolicySettings, known_tools: frozenset[str] | None = None) -> RegoProgram:
    """Read and compile the policy the settings name.

    Raises:
        ConfigError: Unreadable files, a module that does not compile, a bad registry.
    """
    return compile_rego(read_sources(settings), known_tools=known_tools)


class RegoPolicy(FollowsFiles):
    """A `PolicyDecider`: an embedded Rego policy, compiled once per load, following its files."""

    def __init__(
        self,
        settings: PolicySettings,
        *,
        tool_scopes: Mapping[str, Sequence[str]],
        clock: Clock,
    ) -> None:
        """Compile the policy.

        Raises:
            ConfigError: The policy cannot be compiled (the broker must not start).
        """
        self._settings = settings
        self._scopes = {k: tuple(v) for k, v in tool_scopes.items()}
        self._known = frozenset(tool_scopes) or None
        self._clock = clock
        self._decisions = RegoDecisions(load_rego(settings, self._known), self._scopes)
        self._watch_seconds = settings.watch_seconds
        self._stamp = self._stat()
        self._task: asyncio.Task[None] | None = None
        self._reloads: set[asyncio.Task[None]] = set()
        self._listeners: list[LoadListener] = []
        self.last_error: str | None = None
        log.info("rego policy loaded", policy_id=self.program.id, version=self.program.version)

    @property
    def program(self) -> RegoProgram:
        """The running compiled policy."""
        return self._decisions.program

    @property
    def engine(self) -> PolicyEngine:
        """The running policy's agent registry (no YAML rules), for the admin directory."""
        return self._decisions.engine

    @property
    def version(self) -> tuple[str, str]:
        """The running policy's id and version."""
        return self.program.id, self.program.version

    def _loaded(self) -> PolicyVersion:
        program = self.program
        return PolicyVersion(
            program.id, program.version, program.content_hash, program.raw, program.suffix
        )

    async def decide(self, ctx: RequestContext, decision_id: str) -> Decision:
        """Decide on the input document (in memory: no I/O; runs on the event loop)."""
        return self._decisions.decide(ctx, decision_id)

    def deny(
        self,
        decision_id: str,
        reasons: Sequence[str],
        messages: Sequence[str],
        *,
        would_deny: tuple[ShadowDenial, ...] = (),
    ) -> Decision:
        """A denial under the running policy."""
        return self._decisions.deny(decision_id, reasons, messages, would_deny=would_deny)

    # -- reloading (as the rule engine does) -------------------------------------------------

    def _files(self) -> list[Path]:
        settings = self._settings
        if settings.module is not None:
            return [settings.module]
        assert settings.bundle is not None
        return [*sorted(settings.bundle.glob("*.rego")), settings.bundle / "data.json"]

    def _stat(self) -> tuple[tuple[int, int] | None, ...]:
        stamps: list[tuple[int, int] | None] = []
        for path in self._files():
            try:
                st = path.stat()
            except OSError:
                stamps.append(None)
                continue
            stamps.append((st.st_mtime_ns, st.st_size))
        return tuple(stamps)

    def reload(self) -> bool:
        """Compile the files again; keep the running policy if they do not compile.

        Returns:
            Whether a new policy is now running.
        """
        self._stamp = self._stat()
        try:
            program = load_rego(self._settings, self._known)
        except ConfigError as exc:
            self.last_error = str(exc)
            log.error(  # noqa: TRY400 - the message is the reason
                "policy reload rejected; keeping the running policy",
                reason=str(exc),
                running_version=self.program.version,
            )
            return False
        self.last_error = None
        if program.version == self.program.version:
            return False
        # Program, registry and interpreter are replaced together: a decision sees one load.
        self._decisions = RegoDecisions(program, self._scopes)
        log.info("rego policy reloaded", policy_id=program.id, version=program.version)
        return True
