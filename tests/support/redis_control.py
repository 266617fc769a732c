"""A redis-server the test stops and starts again by PID, with or without persistence.

`persistent=True` runs it as the chart requires (AOF, `appendonly yes`, every write
fsynced): a restart keeps everything. `persistent=False` keeps nothing (no AOF, no RDB):
a restart comes back empty, as a Redis pod on an `emptyDir` would.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.broker import free_port


def _binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:  # `make test` installs it; a bare pytest run must say why
        raise RuntimeError("redis-server is not installed: run `make test` (it installs it)")
    return binary


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class ControlledRedis:
    directory: Path
    persistent: bool
    port: int = field(default_factory=free_port)
    pid: int | None = None
    extra: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> ControlledRedis:
        """Start on the same port and directory as before (AOF files are reloaded)."""
        assert self.pid is None, "already running"
        self.directory.mkdir(parents=True, exist_ok=True)
        pidfile = self.directory / "redis.pid"
        pidfile.unlink(missing_ok=True)
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.persistent
            else ["--appendonly", "no"]
        )
        subprocess.run(
            [
                _binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--daemonize",
                "yes",
                "--pidfile",
                str(pidfile),
                "--dir",
                str(self.directory),
                "--save",
                "",
                *persistence,
                "--logfile",
                str(self.directory / "redis.log"),
                *self.extra,
            ],
            check=True,
        )
        deadline = time.monotonic() + 10
        while not (pidfile.exists() and pidfile.read_text().strip() and _answers(self.port)):
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: {self.log()[-2000:]}")
            time.sleep(0.02)
        self.pid = int(pidfile.read_text())
        return self

    def stop(self) -> None:
        """SIGTERM by PID (a clean shutdown: the AOF is flushed), until the port refuses."""
        if self.pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _answers(self.port) or _alive(self.pid):
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
        self.pid = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A daemonized server is not our child: a zombie would still answer kill(pid, 0).
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "State:\tZ" not in status.read_text()


@contextmanager
def controlled_redis(directory: Path, *, persistent: bool) -> Iterator[ControlledRedis]:
    """A redis-server of the test's own, stopped by PID at the end."""
    server = ControlledRedis(directory, persistent).start()
    try:
        yield server
    finally:
        server.stop()
