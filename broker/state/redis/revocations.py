"""A replica's own copy of the agent revocations, so that Redis losing them undoes nothing.

Redis is the shared truth, but a Redis restarted without persistence (or a failover that
lost its last writes) would forget revocations, and a revoked agent would get credentials
again. Every replica therefore keeps every agent revocation it has made or seen (Redis
is read every few seconds) in memory and, with `state.revocations_file`, in an
append-only file of its own, fsynced per revocation. The store puts them back into Redis
when it finds they are missing there (see `RedisStateStore`).

A revocation only ever refuses more, so copies merge by union (the latest `until` wins),
whatever their order.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import structlog

from broker.blocking import DaemonExecutor
from broker.errors import Unavailable
from broker.fileio import write_atomic

__all__ = ["RevocationCopy"]

log = structlog.get_logger(__name__)

FILE_TIMEOUT_SECONDS = 5.0


class RevocationCopy:
    """Agent SPIFFE ID -> epoch seconds until which it is refused; optionally on disk."""

    def __init__(self, path: Path | None) -> None:
        """Create an empty copy (nothing is read until `load`).

        Args:
            path: The append-only file keeping the copy across restarts, or None for
                memory only.
        """
        self._path = path
        self._until: dict[str, float] = {}
        self._written: dict[str, float] = {}  # what the file holds (a failed write retries)
        self._executor = DaemonExecutor(1, "revocations") if path is not None else None
        self._lock = asyncio.Lock()

    def revoked(self, agent: str, now: float) -> bool:
        """Whether the copy refuses `agent` at `now`."""
        return self._until.get(agent, 0.0) > now

    def active(self, now: float) -> dict[str, float]:
        """Every revocation still in force at `now`."""
        return {agent: until for agent, until in self._until.items() if until > now}

    def prune(self, now: float) -> None:
        """Forget revocations that have ended (the file is compacted at the next start)."""
        for agent in [a for a, until in self._until.items() if until <= now]:
            del self._until[agent]
            self._written.pop(agent, None)

    async def load(self, now: float) -> int:
        """Read the file (if any), drop what has ended, rewrite it compacted.

        A torn last line (a crash mid-append) is skipped with a warning.

        Returns:
            How many revocations are in force.

        Raises:
            Unavailable: The file exists but cannot be read or rewritten.
        """
        if self._path is None:
            return 0
        loaded = await self._run(_read, self._path)
        self._merge({agent: until for agent, until in loaded.items() if until > now})
        # Rewritten whole: compacted, and proven writable before the broker serves.
        await self._run(_rewrite, self._path, dict(self._until))
        self._written = dict(self._until)
        return len(self._until)

    async def add(self, revocations: Mapping[str, float]) -> None:
        """Merge revocations into the copy, and append the new ones to the file (fsynced).

        The memory copy is updated even when the file cannot be written; what the file
        misses is appended again by the next call.

        Raises:
            Unavailable: The file could not be written.
        """
        self._merge(revocations)
        if self._path is None:
            return
        async with self._lock:
            pending = {a: u for a, u in self._until.items() if self._written.get(a, 0.0) < u}
            if not pending:
                return
            await self._run(_append, self._path, pending)
            self._written.update(pending)

    def close(self) -> None:
        """Stop the file thread."""
        if self._executor is not None:
            self._executor.shutdown(wait=False)

    def _merge(self, revocations: Mapping[str, float]) -> None:
        for agent, until in revocations.items():
            if until > self._until.get(agent, 0.0):
                self._until[agent] = until

    async def _run(self, fn: Callable[..., dict[str, float]], *args: object) -> dict[str, float]:
        assert self._executor is not None
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(FILE_TIMEOUT_SECONDS):
                result = await asyncio.wrap_future(self._executor.submit(fn, *args), loop=loop)
        except (OSError, TimeoutError) as exc:
            log.error("revocations file unusable", path=str(self._path), error=repr(exc))  # noqa: TRY400 - the cause is in `error`; no traceback needed
            raise Unavailable(
                "the broker's copy of agent revocations cannot be written",
                reason="state_unavailable",
            ) from None
        return result


def _read(path: Path) -> dict[str, float]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    out: dict[str, float] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            agent, until = str(entry["agent"]), float(entry["until"])
        except (ValueError, KeyError, TypeError):
            log.warning("revocations file: unreadable line skipped", path=str(path), line=number)
            continue
        out[agent] = max(until, out.get(agent, 0.0))
    return out


def _lines(revocations: Mapping[str, float]) -> bytes:
    return "".join(
        json.dumps({"agent": agent, "until": until}, separators=(",", ":")) + "\n"
        for agent, until in sorted(revocations.items())
    ).encode()


def _rewrite(path: Path, revocations: Mapping[str, float]) -> dict[str, float]:
    write_atomic(path, _lines(revocations))
    return {}


def _append(path: Path, revocations: Mapping[str, float]) -> dict[str, float]:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, _lines(revocations))
        os.fsync(fd)
    finally:
        os.close(fd)
    return {}
