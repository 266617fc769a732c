"""The `--workers` supervisor: what counts as a clean stop, what as a failure."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading

from broker.workers import _supervise

_SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]  # no signal handler


def _stop_after(children: list[subprocess.Popen[bytes]], stopping: threading.Event) -> None:
    stopping.set()
    for child in children:
        child.send_signal(signal.SIGTERM)


def test_a_worker_ended_by_the_forwarded_stop_signal_is_a_clean_stop() -> None:
    """A worker still starting (no handler yet) dies of SIGTERM: that is the stop asked for."""
    children = [subprocess.Popen(_SLEEPER) for _ in range(2)]
    stopping = threading.Event()
    timer = threading.Timer(0.3, _stop_after, (children, stopping))
    timer.start()
    try:
        assert _supervise(children, stopping) is False
    finally:
        timer.cancel()
    assert [c.returncode for c in children] == [-signal.SIGTERM] * 2


def test_a_worker_failing_while_stopping_is_a_failure() -> None:
    """Exit code 3 during the stop is still reported (exit 1 from the parent)."""
    children = [
        subprocess.Popen([sys.executable, "-c", "import sys, time; time.sleep(0.5); sys.exit(3)"])
    ]
    stopping = threading.Event()
    stopping.set()
    assert _supervise(children, stopping) is True


def test_a_worker_that_dies_unasked_stops_the_others() -> None:
    """One worker exits on its own: the supervisor stops the other and reports failure."""
    quitter = subprocess.Popen([sys.executable, "-c", "pass"])
    sleeper = subprocess.Popen(_SLEEPER)
    stopping = threading.Event()
    assert _supervise([quitter, sleeper], stopping) is True
    assert stopping.is_set()
    assert sleeper.returncode == -signal.SIGTERM
