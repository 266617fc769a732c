"""Is the hook keeping the credentials fresh? A health file and a local HTTP endpoint.

Healthy means: every tool of `--tools` has a credential, and the one that expires first
expires more than `--health-stale-seconds` from now. A refresh replaces all credentials at
half-life, so this turns false only when refreshes keep failing (or before the first
credentials arrive, or when a revoked one could not be replaced).

- `--health-file PATH`: while healthy, holds a JSON status, rewritten after every
  successful refresh; removed as soon as the hook is not healthy (probes test its presence).
- `--health-port N`: `GET /healthz` on 127.0.0.1 answers 200 with that JSON when healthy,
  503 with the same fields when not; evaluated at each request, so it turns 503 even if
  the hook itself is stuck.

The status names tools and expiries only, never a credential.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from broker.fileio import PUBLIC_MODE, write_atomic
from broker.hook.errors import EXIT_OUTPUT, EXIT_USAGE, HookError
from broker.hook.model import Credential

__all__ = ["Health", "HealthServer", "HealthStatus"]


def _iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class HealthStatus:
    """The hook's health at one moment."""

    healthy: bool
    reason: str
    oldest_expires_at: float | None
    last_refresh_at: float | None
    missing: tuple[str, ...]

    def document(self) -> dict[str, Any]:
        """The JSON status (no secrets: tools and times only)."""
        return {
            "status": "healthy" if self.healthy else "stale",
            "reason": self.reason,
            "oldest_expires_at": _iso(self.oldest_expires_at),
            "last_refresh_at": _iso(self.last_refresh_at),
            "missing": list(self.missing),
        }


class Health:
    """Tracks expiries; the hook's loop updates it, the HTTP thread reads it."""

    def __init__(
        self,
        tools: Sequence[str],
        *,
        stale_seconds: float,
        file: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Configure it.

        Args:
            tools: Every tool the hook must hold.
            stale_seconds: Unhealthy when the first expiry is this close.
            file: The health file, if any.
            clock: Seconds since the epoch.
        """
        self._tools = tuple(tools)
        self._stale = stale_seconds
        self._file = file
        self._clock = clock
        self._lock = threading.Lock()
        self._expiries: dict[str, float] = {}
        self._last_refresh: float | None = None
        self._file_healthy: bool | None = None

    def update(self, held: Mapping[str, Credential], *, refreshed: bool) -> None:
        """Record what the hook now holds, then bring the health file up to date.

        Args:
            held: The credentials held, by tool.
            refreshed: A refresh just succeeded (the file is rewritten).

        Raises:
            HookError: The health file cannot be written (exit 7).
        """
        with self._lock:
            self._expiries = {tool: c.expires_at for tool, c in held.items()}
            if refreshed:
                self._last_refresh = self._clock()
        self.sync(force=refreshed)

    def status(self) -> HealthStatus:
        """Health now."""
        with self._lock:
            expiries = dict(self._expiries)
            last = self._last_refresh
        now = self._clock()
        missing = tuple(t for t in self._tools if t not in expiries)
        oldest = min(expiries.values()) if expiries else None
        if missing:
            reason = f"no credential for {', '.join(missing)}"
            return HealthStatus(False, reason, oldest, last, missing)  # noqa: FBT003
        assert oldest is not None
        if oldest - now <= self._stale:
            reason = f"a credential expires in {max(0, int(oldest - now))} s without a refresh"
            return HealthStatus(False, reason, oldest, last, missing)  # noqa: FBT003
        return HealthStatus(True, "fresh", oldest, last, missing)  # noqa: FBT003

    def stale_at(self) -> float | None:
        """When the hook turns stale if nothing changes (None: already, or nothing held)."""
        with self._lock:
            if not self._expiries:
                return None
            return min(self._expiries.values()) - self._stale

    def sync(self, *, force: bool = False) -> None:
        """Write the health file while healthy, remove it otherwise.

        Raises:
            HookError: The health file cannot be written (exit 7).
        """
        if self._file is None:
            return
        status = self.status()
        if status.healthy == self._file_healthy and not force:
            return
        try:
            if status.healthy:
                payload = json.dumps(status.document(), indent=2).encode()
                write_atomic(self._file, payload, mode=PUBLIC_MODE)
            else:
                self._file.unlink(missing_ok=True)
        except OSError as exc:
            raise HookError(
                EXIT_OUTPUT, f"cannot write --health-file {self._file}: {exc.strerror}"
            ) from None
        self._file_healthy = status.healthy


class HealthServer:
    """`GET /healthz` on 127.0.0.1, in a daemon thread."""

    def __init__(self, health: Health, port: int, host: str = "127.0.0.1") -> None:
        """Bind now (so that a taken port fails at start).

        Raises:
            HookError: The port cannot be bound (exit 2).
        """
        handler = _handler(health)
        try:
            self._server = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise HookError(
                EXIT_USAGE, f"--health-port {port}: cannot listen: {exc.strerror}"
            ) from None
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="broker-hook-health", daemon=True
        )

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Serve in the background."""
        self._thread.start()

    def close(self) -> None:
        """Stop serving and release the port."""
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()


def _handler(health: Health) -> type[BaseHTTPRequestHandler]:
    class HealthHandler(BaseHTTPRequestHandler):
        server_version = "broker-hook"
        sys_version = ""

        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != "/healthz":
                self._send(HTTPStatus.NOT_FOUND, {"status": "not found"})
                return
            status = health.status()
            code = HTTPStatus.OK if status.healthy else HTTPStatus.SERVICE_UNAVAILABLE
            self._send(code, status.document())

        def _send(self, code: HTTPStatus, body: dict[str, Any]) -> None:
            payload = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
            """Probes every second would flood the log."""

    return HealthHandler
