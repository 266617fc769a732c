"""Stopping background tasks, and the lost cancellation that made a shutdown hang.

A test run once hung for 14 minutes in the teardown of a Vault test: the event loop
alive with a timer due every fraction of a second, the teardown waiting. The likeliest
cause: the lease reconciler (a loop calling Vault through `asyncio.wait_for`, every
0.3 s in that test) was cancelled at the moment a Vault call finished; Python 3.11's
`wait_for` then returns the result and drops the cancellation, so the loop ran on and
`stop_task`, awaiting it once, waited forever. It did not happen again in a dozen runs;
both halves are fixed: no `wait_for` in the broker, and `stop_task` cancels again.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

import broker
from broker import tasks
from broker.tasks import stop_task


@pytest.fixture(autouse=True)
def quick_recancel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tasks, "RECANCEL_SECONDS", 0.05, raising=False)


async def test_a_task_that_loses_its_cancellation_is_still_stopped() -> None:
    """The first cancellation is swallowed (as `wait_for` can); `stop_task` ends it anyway."""
    lost = 0

    async def loop() -> None:
        nonlocal lost
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if lost:
                    raise
                lost += 1  # dropped, like a cancellation that met a finished future

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)
    # Waited on, not cancelled: a cancelled stopper would cancel the task a second time
    # itself, and hide the hang.
    stopper = asyncio.create_task(stop_task(task))
    done, _ = await asyncio.wait({stopper}, timeout=2)
    if not done:
        stopper.cancel()
        await asyncio.wait({stopper})
    assert stopper in done, "stop_task waited forever on a task that lost its cancellation"
    assert task.cancelled()
    assert lost == 1


async def test_a_task_that_fails_while_stopping_reports_its_failure() -> None:
    async def failing() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise ValueError("cleanup failed") from None

    task = asyncio.create_task(failing())
    await asyncio.sleep(0)
    with pytest.raises(ValueError, match="cleanup failed"):
        await stop_task(task)


async def test_none_and_finished_tasks_are_nothing_to_stop() -> None:
    await stop_task(None)

    async def done() -> None:
        return None

    task = asyncio.create_task(done())
    await task
    await stop_task(task)
    assert task.done()
    assert not task.cancelled()


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="wait_for keeps the cancellation")
async def test_wait_for_loses_a_cancellation_that_meets_a_finished_future() -> None:
    """Why the broker uses `asyncio.timeout`: the same race, both ways, on this Python."""

    async def both(use_wait_for: bool) -> asyncio.Task[int]:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def waiter() -> int:
            if use_wait_for:
                return await asyncio.wait_for(future, 10)
            async with asyncio.timeout(10):
                return await future

        task = asyncio.create_task(waiter())
        await asyncio.sleep(0)  # the task waits on the future
        future.set_result(7)
        task.cancel()  # in the same turn
        await asyncio.wait({task})
        return task

    assert (await both(use_wait_for=True)).result() == 7  # the cancellation is gone
    assert (await both(use_wait_for=False)).cancelled()


def test_the_broker_does_not_use_wait_for() -> None:
    """Every deadline in the broker is `asyncio.timeout`, which keeps a cancellation."""
    root = Path(broker.__file__).parent
    users = [
        str(path.relative_to(root))
        for path in sorted(root.rglob("*.py"))
        if "asyncio.wait_for(" in path.read_text()
    ]
    assert users == []
