"""Child processes of the harness: started in their own session, always stopped by PID.

Every server the harness starts (the broker, the bare endpoint, OpenBao) and every load
generator goes through `spawn`, which registers it; `stop` ends it by its PID (SIGTERM,
then SIGKILL of its process group after a grace period, so that a `--workers N` broker's
children go too), and `stop_all` (called from the harness's `finally`, and on SIGTERM or
Ctrl-C) stops whatever is still registered. On Linux the children also get
PR_SET_PDEATHSIG, so that even a SIGKILLed harness leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import IO

__all__ = [
    "Proc",
    "free_port",
    "read_rss_kib",
    "spawn",
    "stop",
    "stop_all",
    "tool",
    "wait_http",
]

_PR_SET_PDEATHSIG = 1
_LIVE: dict[int, Proc] = {}


class Proc:
    """A started child: its Popen, a name for messages, and where its output goes."""

    __slots__ = ("log", "name", "popen")

    def __init__(self, name: str, popen: subprocess.Popen[bytes], log: Path | None) -> None:
        self.name = name
        self.popen = popen
        self.log = log

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 15) -> str:
        """The end of the child's log, for error messages."""
        if self.log is None or not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def tool(name: str) -> str:
    """A console script of this virtualenv (`broker`, `bao`), else from PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    return name


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    log: Path | None = None,
    stdout: int | IO[bytes] | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> Proc:
    """Start a child in its own session (Ctrl-C reaches the harness only) and register it.

    Args:
        name: For messages.
        argv: The command.
        log: File that receives stdout and stderr (unless `stdout` is given).
        stdout: Where stdout goes instead (e.g. `subprocess.PIPE` for generators).
        cwd: Working directory.
        env: Extra environment variables.

    Returns:
        The started process.
    """
    out: int | IO[bytes] | None
    err: int | IO[bytes] | None
    handle = None
    if log is not None:
        handle = log.open("ab")
        out = handle if stdout is None else stdout
        err = handle
    else:
        out = stdout if stdout is not None else subprocess.DEVNULL
        err = subprocess.DEVNULL if stdout is None else None
    try:
        popen = subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
        )
    finally:
        if handle is not None:
            handle.close()
    proc = Proc(name, popen, log)
    _LIVE[popen.pid] = proc
    return proc


def stop(proc: Proc, *, grace: float = 10.0) -> int | None:
    """Stop a child by its PID: SIGTERM, then SIGKILL to its process group.

    Returns:
        Its exit code (None if it had to be killed and did not report one).
    """
    _LIVE.pop(proc.pid, None)
    if proc.alive():
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout=grace)
    # The child's own children (a `--workers N` broker) live in its process group, whose
    # id is the child's PID because it was started in a new session.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        return proc.popen.wait(timeout=5)
    except subprocess.TimeoutExpired:
        return None


def stop_all() -> None:
    """Stop every child still registered, newest first."""
    for proc in reversed(list(_LIVE.values())):
        stop(proc, grace=5.0)


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(
    url: str, *, ca: Path, proc: Proc, timeout: float = 30.0, headers: dict[str, str] | None = None
) -> None:
    """Wait until `url` answers 200 over HTTPS (trusting `ca`), or fail with the child's log.

    Raises:
        RuntimeError: The child exited or did not become ready in time.
    """
    ctx = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited during start-up:\n{proc.tail()}")
        request = urllib.request.Request(url, headers=headers or {})  # noqa: S310
        try:
            with urllib.request.urlopen(request, context=ctx, timeout=2) as resp:  # noqa: S310
                if resp.status == 200:
                    return
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name} not ready at {url} ({last}):\n{proc.tail()}")


def read_rss_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in KiB, from /proc/PID/status."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in {"VmRSS", "VmHWM"}:
            values[key] = int(rest.split()[0])
    return values
