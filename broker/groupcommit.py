"""Group commit: operations queued from the event loop, run in batches on one thread.

A blocking backend (SQLite) answers each statement in microseconds, but a thread hop per
request costs more than the statement. Here requests queue their operation and await a
future; one daemon thread takes everything queued, runs it as one batch (one transaction,
one commit), and resolves every waiter of the batch with a single wake-up of the loop.
Under load a batch holds many requests, so the hop is paid per batch, not per request.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

__all__ = ["GroupCommitter"]

Op = TypeVar("Op")

_STOP = object()


class GroupCommitter(Generic[Op]):
    """Runs queued operations in batches on a daemon thread.

    Attributes:
        batches: Batches run so far (for metrics and the hot-path regression tests).
        submitted: Operations submitted so far.
    """

    def __init__(self, name: str, run_batch: Callable[[Sequence[Op]], Sequence[object]]) -> None:
        """Create the committer (the thread starts with `start`).

        Args:
            name: The thread's name.
            run_batch: Runs a batch on the thread; returns one result per operation, an
                exception instance standing for that operation's failure. An exception
                it raises fails the whole batch.
        """
        self._name = name
        self._run_batch = run_batch
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.batches = 0
        self.submitted = 0

    def start(self) -> None:
        """Start the thread."""
        self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Let the thread finish what is queued, then stop it."""
        if self._thread is None:
            return
        self._queue.put(_STOP)
        self._thread.join(timeout)
        self._thread = None

    def submit(self, op: Op) -> asyncio.Future[Any]:
        """Queue `op`; the future resolves with its result once its batch committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self.submitted += 1
        self._queue.put((loop, future, op))
        return future

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            work = [item]
            stop = False
            while True:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    stop = True
                    break
                work.append(more)
            self._run(work)
            if stop:
                return

    def _run(self, work: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], Op]]) -> None:
        try:
            results: Sequence[object] = self._run_batch([op for _, _, op in work])
        except BaseException as exc:  # noqa: BLE001 - delivered to every waiter
            results = [exc] * len(work)
        self.batches += 1
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], object]]] = {}
        for (loop, future, _), result in zip(work, results, strict=True):
            by_loop.setdefault(loop, []).append((future, result))
        for loop, pairs in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, pairs)
            except RuntimeError:  # the loop closed while the batch ran
                continue


def _resolve(pairs: list[tuple[asyncio.Future[Any], object]]) -> None:
    for future, result in pairs:
        if future.done():
            continue
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)
