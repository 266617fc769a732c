"""SQLite sliding-window rate limits: a check reads a kept count, never counts the window.

The window is a row per event; `rate_counts` holds each key's number of live events,
changed in the same transaction as every insert and delete (consume, expiry, refund,
purge). A check's work must not grow with the number of events in the window: counted
here in SQLite virtual-machine steps (a progress handler), not in seconds.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from broker.domain import LimitCheck
from broker.state.sqlite import SqliteStateStore
from tests.support.clock import ManualClock


def rate(key: str, limit: int, window: int = 60) -> LimitCheck:
    return LimitCheck("r", "rate", key, limit, window, 1)


def counts(store: SqliteStateStore) -> dict[str, int]:
    """`rate_counts` against a recount of `rate_events`: they must agree."""
    kept = dict(store._read(lambda db: db.execute("SELECT key, count FROM rate_counts").fetchall()))
    actual = dict(
        store._read(
            lambda db: db.execute("SELECT key, count(*) FROM rate_events GROUP BY key").fetchall()
        )
    )
    assert kept == actual
    return kept


async def test_the_kept_count_follows_consume_expiry_refund_and_purge(tmp_path: Path) -> None:
    clock = ManualClock()
    store = SqliteStateStore(tmp_path / "state.db", clock)
    await store.start()
    try:
        now = clock.time()
        for i in range(5):
            assert (await store.consume_limits([rate("a", 10, window=60)], f"m{i}", now)).allowed
        assert (await store.consume_limits([rate("b", 10)], "x", now)).allowed
        assert counts(store) == {"a": 5, "b": 1}
        await store.refund_limits([rate("a", 10)], "m0", now)
        assert counts(store) == {"a": 4, "b": 1}
        # 61 s later the window of "a" is empty again: the next check expires the old events.
        assert (await store.consume_limits([rate("a", 10)], "late", now + 61)).allowed
        assert counts(store) == {"a": 1, "b": 1}
        clock.advance(86_400 * 2)
        await store.purge()
        assert counts(store) == {}
    finally:
        await store.close()


async def test_a_file_of_schema_1_gets_its_counts(tmp_path: Path) -> None:
    """Events written by a broker before the kept counts are counted on start."""
    path = tmp_path / "state.db"
    clock = ManualClock()
    store = SqliteStateStore(path, clock)
    await store.start()
    for i in range(3):
        await store.consume_limits([rate("old", 3)], f"m{i}", clock.time())
    await store.close()
    db = sqlite3.connect(path)
    db.execute("DROP TABLE rate_counts")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    store = SqliteStateStore(path, clock)
    await store.start()
    try:
        assert counts(store) == {"old": 3}
        assert not (await store.consume_limits([rate("old", 3)], "m9", clock.time())).allowed
    finally:
        await store.close()


async def test_a_check_costs_the_same_with_10_or_5000_events_in_the_window(
    tmp_path: Path,
) -> None:
    store = SqliteStateStore(tmp_path / "state.db", ManualClock())
    await store.start()
    try:
        now = time.time()
        check = rate("busy", 1_000_000, window=3600)
        steps: dict[int, int] = {}
        for size in (10, 5000):
            assert store._db is not None
            have = counts(store).get("busy", 0)
            fill = [("busy", f"fill{i}", now) for i in range(have, size - 1)]
            store._db.executemany("INSERT INTO rate_events VALUES (?, ?, ?)", fill)
            store._db.execute(
                "INSERT INTO rate_counts VALUES ('busy', ?) "
                "ON CONFLICT(key) DO UPDATE SET count = count + excluded.count",
                (len(fill),),
            )
            counter = [0]

            def tick(counter: list[int] = counter) -> int:
                counter[0] += 1
                return 0

            store._db.set_progress_handler(tick, 10)
            assert (await store.consume_limits([check], f"probe{size}", now)).allowed
            store._db.set_progress_handler(None, 0)
            steps[size] = counter[0]
        assert steps[5000] < 2 * steps[10], steps
    finally:
        await store.close()
