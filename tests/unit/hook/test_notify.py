"""Notifications after a change: a signal (PID or PID file) and a command without a shell."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import structlog

from broker.hook.notify import Notifier, SignalTarget

CATCHER = """
import signal, sys, time
from pathlib import Path
out = Path(sys.argv[1])
signal.signal(signal.SIGHUP, lambda *_: out.write_text(out.read_text() + "hup\\n"))
out.write_text("ready\\n")
time.sleep(30)
"""


def wait_for(predicate, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_signal_goes_to_the_pid_in_the_pid_file(tmp_path: Path) -> None:
    """SIGHUP reaches the process whose PID the file holds (read at each notification)."""
    marker = tmp_path / "marker"
    child = subprocess.Popen([sys.executable, "-c", CATCHER, str(marker)])
    try:
        wait_for(lambda: marker.exists() and "ready" in marker.read_text())
        (tmp_path / "pid").write_text(f"{child.pid}\n")
        notifier = Notifier(
            target=SignalTarget(signal.SIGHUP, pid_file=tmp_path / "pid"), command=None, timeout=5
        )
        notifier.notify("written")
        wait_for(lambda: marker.read_text().count("hup") == 1)
        notifier.notify("written")
        wait_for(lambda: marker.read_text().count("hup") == 2)
    finally:
        child.kill()
        child.wait()


def test_signal_failures_are_logged_not_raised(tmp_path: Path) -> None:
    """A missing PID file or a PID that is not a number: a warning, the hook goes on."""
    (tmp_path / "pid").write_text("not-a-pid")
    with structlog.testing.capture_logs() as logs:
        Notifier(
            target=SignalTarget(signal.SIGHUP, pid_file=tmp_path / "pid"), command=None, timeout=1
        ).notify("written")
        Notifier(
            target=SignalTarget(signal.SIGHUP, pid_file=tmp_path / "none"), command=None, timeout=1
        ).notify("written")
    assert [e["event"] for e in logs] == ["reload signal not sent"] * 2


def test_command_runs_without_a_shell_with_the_event(tmp_path: Path) -> None:
    """The command gets its argv verbatim (no shell expansion) and BROKER_HOOK_EVENT."""
    out = tmp_path / "out"
    script = (
        "import os, sys; "
        "open(sys.argv[1], 'w').write(os.environ['BROKER_HOOK_EVENT'] + ' ' + sys.argv[2])"
    )
    command = [sys.executable, "-c", script, str(out), "$HOME;rm"]
    with structlog.testing.capture_logs() as logs:
        Notifier(target=None, command=command, timeout=10).notify("removed")
    assert out.read_text() == "removed $HOME;rm"
    assert logs[0]["event"] == "refresh command ran"
    assert logs[0]["exit_status"] == 0


def test_command_exit_status_timeout_and_absence_are_logged(tmp_path: Path) -> None:
    """Non-zero exit: logged with its status; too slow: killed; not found: logged."""
    with structlog.testing.capture_logs() as logs:
        Notifier(
            target=None, command=[sys.executable, "-c", "raise SystemExit(3)"], timeout=10
        ).notify("written")
        started = time.monotonic()
        Notifier(
            target=None, command=[sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5
        ).notify("written")
        assert time.monotonic() - started < 10
        Notifier(target=None, command=[str(tmp_path / "nope")], timeout=1).notify("written")
    assert [(e["event"], e.get("exit_status")) for e in logs] == [
        ("refresh command ran", 3),
        ("refresh command timed out and was killed", None),
        ("refresh command could not start", None),
    ]
