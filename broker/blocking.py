"""Running blocking calls (file fsync, hvac, sqlite) off the event loop, on daemon threads.

`concurrent.futures.ThreadPoolExecutor` joins its threads at interpreter exit, so a call
stuck forever (a dead NFS mount, a hung TCP connection) would keep the broker from ever
shutting down. Callers bound every call with a timeout; this executor makes sure a call
that never returns cannot hold the process hostage either.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, ParamSpec, TypeVar

__all__ = ["DaemonExecutor"]

T = TypeVar("T")
P = ParamSpec("P")

_Work = tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class DaemonExecutor(Executor):
    """A fixed pool of daemon worker threads."""

    def __init__(self, max_workers: int, name: str) -> None:
        """Start `max_workers` daemon threads named `name-N`."""
        self._queue: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._workers = [
            threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True)
            for i in range(max_workers)
        ]
        self._shutdown = False
        for worker in self._workers:
            worker.start()

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Queue a call."""
        if self._shutdown:
            raise RuntimeError("executor is shut down")
        future: Future[T] = Future()
        self._queue.put((future, fn, args, kwargs))
        return future

    def _run(self) -> None:
        while True:
            work = self._queue.get()
            if work is None:
                return
            future, fn, args, kwargs = work
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # noqa: BLE001 - delivered to the caller
                future.set_exception(exc)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:  # noqa: FBT001, FBT002
        """Stop the workers after the queued calls (waiting only for idle ones)."""
        self._shutdown = True
        if cancel_futures:
            while True:
                try:
                    work = self._queue.get_nowait()
                except queue.Empty:
                    break
                if work is not None:
                    work[0].cancel()
        for _ in self._workers:
            self._queue.put(None)
        if wait:
            for worker in self._workers:
                worker.join(timeout=5)
