"""Telling the agent that its credentials changed: a signal to a process, and/or a command.

The command runs without a shell (argv split with `shlex`), with stdin, stdout and stderr
on /dev/null (whatever it prints could be a secret), under a timeout after which it is
killed; its exit status is logged. `BROKER_HOOK_EVENT` in its environment says what
happened: `written` (new credentials) or `removed` (revoked or expired ones taken away).
Failures are logged and never stop the hook.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from broker.hook.errors import EXIT_USAGE, HookError

__all__ = ["Notifier", "SignalTarget", "parse_signal"]

log = structlog.get_logger("broker.hook")


def parse_signal(name: str) -> signal.Signals:
    """`SIGHUP`, `HUP`, `hup` or `1` -> the signal.

    Raises:
        HookError: Not a signal name or number (exit 2).
    """
    text = name.strip().upper()
    try:
        if text.isdigit():
            return signal.Signals(int(text))
        return signal.Signals[text if text.startswith("SIG") else f"SIG{text}"]
    except (KeyError, ValueError):
        raise HookError(EXIT_USAGE, f"--on-refresh-signal: unknown signal {name!r}") from None


@dataclass(frozen=True, slots=True)
class SignalTarget:
    """Which process gets which signal: a fixed PID, or the one in a PID file (read each time)."""

    signum: signal.Signals
    pid: int | None = None
    pid_file: Path | None = None

    def resolve(self) -> int:
        """The PID to signal now.

        Raises:
            ValueError: The PID file does not hold a PID.
            OSError: The PID file cannot be read.
        """
        if self.pid is not None:
            return self.pid
        assert self.pid_file is not None
        pid = int(self.pid_file.read_text().strip())
        if pid <= 1:
            raise ValueError(f"refusing to signal PID {pid}")
        return pid


class Notifier:
    """Runs the configured notifications after every change of the outputs."""

    def __init__(
        self, *, target: SignalTarget | None, command: Sequence[str] | None, timeout: float
    ) -> None:
        """Configure it.

        Args:
            target: The process to signal, if any.
            command: The argv to run, if any.
            timeout: Seconds the command may run.
        """
        self._target = target
        self._command = tuple(command) if command else None
        self._timeout = timeout

    def notify(self, event: str) -> None:
        """Signal and run the command; log, never raise."""
        if self._target is not None:
            self._signal(self._target)
        if self._command is not None:
            self._run(self._command, event)

    @staticmethod
    def _signal(target: SignalTarget) -> None:
        try:
            pid = target.resolve()
            os.kill(pid, target.signum)
        except (OSError, ValueError) as exc:
            log.warning("reload signal not sent", signal=target.signum.name, reason=str(exc))
            return
        log.info("reload signal sent", signal=target.signum.name, pid=pid)

    def _run(self, command: tuple[str, ...], event: str) -> None:
        try:
            completed = subprocess.run(  # noqa: S603 - argv from the operator, no shell
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=self._timeout,
                env={**os.environ, "BROKER_HOOK_EVENT": event},
                check=False,
            )
        except subprocess.TimeoutExpired:
            log.warning("refresh command timed out and was killed", program=command[0])
            return
        except OSError as exc:
            log.warning("refresh command could not start", program=command[0], reason=exc.strerror)
            return
        log_method = log.info if completed.returncode == 0 else log.warning
        log_method("refresh command ran", program=command[0], exit_status=completed.returncode)
