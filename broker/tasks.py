"""Background tasks: one way to stop them."""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["RECANCEL_SECONDS", "stop_task"]

# How long `stop_task` waits for a cancelled task before cancelling it again.
RECANCEL_SECONDS = 1.0


async def stop_task(task: asyncio.Task[None] | None) -> None:
    """Cancel a background task (if any) and wait until it has ended.

    A cancellation can be lost: on Python 3.11, `asyncio.wait_for` returns its result
    instead of raising when the awaited future completes in the same loop turn as the
    cancellation, and a library may do the same. A loop task that lost its cancellation
    would run on, and a single `await task` would then wait forever (a broker that never
    exits on SIGTERM, an audit file closed without its final checkpoint). So the task is
    cancelled again until it has ended.
    """
    if task is None:
        return
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=RECANCEL_SECONDS)
    with contextlib.suppress(asyncio.CancelledError):
        await task  # its own failure, if it failed, is the caller's to see
