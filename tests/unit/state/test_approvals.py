"""The ApprovalStore (SQLite): records round-trip, each status change happens at most once."""

from __future__ import annotations

import asyncio
from pathlib import Path

from broker.domain import UserRef
from broker.state.base import ApprovalRecord
from broker.state.sqlite import SqliteStateStore
from broker.typing import ApprovalStore
from tests.support.clock import ManualClock


async def test_compare_and_set_lets_one_of_many_win(tmp_path: Path, clock: ManualClock) -> None:
    """Concurrent approved->issued moves: exactly one succeeds (credentials collected once)."""
    store = SqliteStateStore(tmp_path / "state.db", clock)
    assert isinstance(store, ApprovalStore)
    await store.start()
    try:
        record = ApprovalRecord(
            "a1",
            "d1",
            "spiffe://td/agent/x",
            UserRef("https://idp", "alice"),
            ("crm",),
            60,
            clock.time(),
            clock.time() + 900,
            user_groups=("g",),
            actors=("spiffe://td/a",),
        )
        await store.put_approval(record)
        assert await store.get_approval("a1") == record
        approved = await store.set_approval_status(
            "a1", expected="pending", status="approved", approver="admin", reason="ok"
        )
        assert approved is not None
        assert (approved.status, approved.approver, approved.reason) == ("approved", "admin", "ok")
        assert await store.set_approval_status("a1", expected="pending", status="denied") is None
        claims = await asyncio.gather(
            *(
                store.set_approval_status("a1", expected="approved", status="issued")
                for _ in range(5)
            )
        )
        assert sum(c is not None for c in claims) == 1
        assert await store.get_approval("missing") is None
    finally:
        await store.close()
