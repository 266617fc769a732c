"""Pending human approvals in Redis, so that any replica can answer for any approval.

One hash per approval: `record` (the record as put, JSON) and the fields that change,
`status`, and `approver` and `reason` once someone decided. A status change is one Lua
compare-and-set on `status`, so of two replicas moving the same approval (approving,
expiring, collecting) exactly one wins. The script never decodes and re-encodes the JSON:
Redis's cjson keeps 14 significant digits, which would round the epoch-second timestamps.
The key expires a day after the approval lapses (`APPROVAL_MEMORY_SECONDS`), so a late
poll is told 410, not 404; `HSET` keeps that expiry.

The methods raise the Redis client's own errors; `RedisStateStore` turns them into
`Unavailable`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, cast

import redis.asyncio as aioredis

from broker.state.base import (
    APPROVAL_MEMORY_SECONDS,
    ApprovalRecord,
    approval_from_json,
    approval_to_json,
)

__all__ = ["RedisApprovals"]

# KEYS: the approval. ARGV: expected, status, then for approver and reason each a flag
# ('1': set it) and the value. Returns the hash's fields, or false when unknown or not
# in `expected`.
_SET_STATUS = """
if redis.call('HGET', KEYS[1], 'status') ~= ARGV[1] then return false end
redis.call('HSET', KEYS[1], 'status', ARGV[2])
if ARGV[3] == '1' then redis.call('HSET', KEYS[1], 'approver', ARGV[4]) end
if ARGV[5] == '1' then redis.call('HSET', KEYS[1], 'reason', ARGV[6]) end
return redis.call('HGETALL', KEYS[1])
"""


class RedisApprovals:
    """The approval half of `RedisStateStore` (which delegates to it)."""

    __slots__ = ("_key", "_redis", "_set_status")

    def __init__(self, client: aioredis.Redis, key: Callable[[str], str]) -> None:
        """Bind to the store's client.

        Args:
            client: The store's Redis client.
            key: The Redis key of an approval id (the store's prefix applied).
        """
        self._redis = client
        self._key = key
        self._set_status = client.register_script(_SET_STATUS)

    async def put(self, record: ApprovalRecord) -> None:
        """Remember an approval until a day after it lapses."""
        key = self._key(record.approval_id)
        pipe: Any
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)  # a whole new record, even over a (vanishingly unlikely) same id
            pipe.hset(key, mapping={"record": approval_to_json(record), "status": record.status})
            pipe.expireat(key, math.ceil(record.expires_at + APPROVAL_MEMORY_SECONDS))
            await pipe.execute()

    async def get(self, approval_id: str) -> ApprovalRecord | None:
        """An approval, or None if unknown (or forgotten)."""
        # The store's client answers bytes (no decode_responses).
        fields = cast("Mapping[bytes, bytes]", await self._redis.hgetall(self._key(approval_id)))
        return _record(fields)

    async def set_status(
        self,
        approval_id: str,
        *,
        expected: str,
        status: str,
        approver: str | None,
        reason: str | None,
    ) -> ApprovalRecord | None:
        """Move an approval from `expected` to `status` (one script); None if it was not there."""
        reply = await self._set_status(
            keys=[self._key(approval_id)],
            args=[
                expected,
                status,
                "0" if approver is None else "1",
                approver or "",
                "0" if reason is None else "1",
                reason or "",
            ],
        )
        if not reply:
            return None
        return _record(dict(zip(reply[::2], reply[1::2], strict=True)))


def _record(fields: Mapping[bytes, bytes]) -> ApprovalRecord | None:
    """The record as put, with what changed since."""
    body = fields.get(b"record")
    if body is None:
        return None
    put = approval_from_json(body)
    approver, reason = fields.get(b"approver"), fields.get(b"reason")
    return dataclasses.replace(
        put,
        status=fields[b"status"].decode(),
        approver=put.approver if approver is None else approver.decode(),
        reason=put.reason if reason is None else reason.decode(),
    )
