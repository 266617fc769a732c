"""The shared state store: Redis, for several broker replicas.

Every key expires on its own (EXPIREAT at the end of its useful life). Limits are checked
and consumed by one Lua script, so "60 per minute" holds across replicas: the script
checks every limit first and consumes them only if all admit the request.
Keys of one request may span several limits, so this targets a single Redis (or a
Sentinel-managed primary), not Redis Cluster.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from broker.domain import LimitCheck
from broker.errors import Unavailable
from broker.state.base import (
    CredentialRecord,
    LimitResult,
    budget_key,
    credential_from_json,
    credential_to_json,
)
from broker.typing import Clock

__all__ = ["RedisStateStore"]

log = structlog.get_logger(__name__)

T = TypeVar("T")

LEASE_RETENTION_SECONDS = 7 * 86400
POOL_WAIT_SECONDS = 10.0

# ARGV: now, member, then per key: kind, limit, window, cost, expire_at (budgets)
_CONSUME = """
local now = tonumber(ARGV[1])
local member = ARGV[2]
for i = 1, #KEYS do
  local base = 2 + (i - 1) * 5
  local kind = ARGV[base + 1]
  local limit = tonumber(ARGV[base + 2])
  local window = tonumber(ARGV[base + 3])
  local cost = tonumber(ARGV[base + 4])
  if kind == 'rate' then
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - window)
    local count = redis.call('ZCARD', KEYS[i])
    if count + cost > limit then
      local need = count + cost - limit
      local oldest = redis.call('ZRANGE', KEYS[i], need - 1, need - 1, 'WITHSCORES')
      local retry = window
      if oldest[2] then retry = tonumber(oldest[2]) + window - now end
      return {i, tostring(retry)}
    end
  else
    local count = tonumber(redis.call('GET', KEYS[i]) or '0')
    if count + cost > limit then
      return {i, tostring(tonumber(ARGV[base + 5]) - now)}
    end
  end
end
for i = 1, #KEYS do
  local base = 2 + (i - 1) * 5
  local kind = ARGV[base + 1]
  local window = tonumber(ARGV[base + 3])
  local cost = tonumber(ARGV[base + 4])
  if kind == 'rate' then
    for j = 1, cost do
      redis.call('ZADD', KEYS[i], now, member .. ':' .. j)
    end
    redis.call('EXPIRE', KEYS[i], math.ceil(window) + 1)
  else
    redis.call('INCRBY', KEYS[i], cost)
    redis.call('EXPIREAT', KEYS[i], math.ceil(tonumber(ARGV[base + 5])) + 1)
  end
end
return {0, '0'}
"""

_REVOKE = """
local value = redis.call('GET', KEYS[1])
if not value then return false end
local record = cjson.decode(value)
record['revoked'] = true
local encoded = cjson.encode(record)
redis.call('SET', KEYS[1], encoded, 'KEEPTTL')
if record['lease_id'] ~= cjson.null and record['lease_id'] ~= nil then
  redis.call('SET', KEYS[2], encoded, 'KEEPTTL')
end
return encoded
"""


class RedisStateStore:
    """A `StateStore` on Redis."""

    def __init__(
        self,
        url: str,
        clock: Clock,
        *,
        prefix: str = "broker:",
        password_file: Path | None = None,
        timeout_seconds: float = 2.0,
        max_connections: int = 64,
    ) -> None:
        """Create the store (connections open lazily).

        Args:
            url: `redis://` or `rediss://` URL.
            clock: For expiries.
            prefix: Prefix of every key.
            password_file: File holding the password (kept out of the configuration).
            timeout_seconds: Socket timeout of each command, and the longest wait for a
                free connection.
            max_connections: Connections per broker process.
        """
        password = password_file.read_text().strip() if password_file else None
        # A bounded pool that *waits* for a free connection: the default pool raises at
        # once when a burst exceeds it, which would become 503s. The wait is longer than
        # a command's timeout: under a burst, queueing for a connection is load, not an
        # outage (a dead server still fails each command within `timeout_seconds`).
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            password=password,
            max_connections=max_connections,
            timeout=max(timeout_seconds, POOL_WAIT_SECONDS),
            socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds,
            health_check_interval=30,
        )
        self._redis = aioredis.Redis(connection_pool=pool)
        self._clock = clock
        self._p = prefix
        self._consume = self._redis.register_script(_CONSUME)
        self._revoke = self._redis.register_script(_REVOKE)

    def _k(self, *parts: str) -> str:
        return self._p + ":".join(parts)

    async def start(self) -> None:
        """Check the connection (a failure is logged; readiness reports it)."""
        if not await self.ping():
            log.warning("redis not reachable yet")

    async def close(self) -> None:
        """Close connections."""
        await self._redis.aclose()

    async def ping(self) -> bool:
        """Whether Redis answers."""
        try:
            return bool(await self._redis.ping())
        except (RedisError, OSError):
            return False

    async def put_credentials(self, records: Sequence[CredentialRecord]) -> None:
        """Remember issued credentials until they expire (and leases until released)."""
        pipe: Any
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                for r in records:
                    body = credential_to_json(r)
                    expire_at = math.ceil(r.expires_at)
                    pipe.set(self._k("cred", r.credential_id), body, exat=expire_at)
                    owner = self._k("agentcreds", r.agent)
                    pipe.zadd(owner, {r.credential_id: r.expires_at})
                    pipe.expireat(owner, expire_at, gt=True)
                    pipe.expireat(owner, expire_at, nx=True)
                    if r.lease_id is not None:
                        # Kept until Vault confirms the revocation; the safety expiry only
                        # bounds growth if no reconciler ever runs.
                        safety = expire_at + LEASE_RETENTION_SECONDS
                        pipe.set(self._k("lease", r.credential_id), body, exat=safety)
                        pipe.zadd(self._k("leases"), {r.credential_id: r.expires_at})
                        pipe.expireat(self._k("leases"), safety, gt=True)
                        pipe.expireat(self._k("leases"), safety, nx=True)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise Unavailable("the state store (Redis) is unavailable") from exc

    async def get_credential(self, credential_id: str) -> CredentialRecord | None:
        """A live credential, or None."""
        value = await self._call(self._redis.get(self._k("cred", credential_id)))
        if value is None:
            return None
        record = credential_from_json(value)
        return record if record.expires_at > self._clock.time() else None

    async def revoke_credential(self, credential_id: str) -> CredentialRecord | None:
        """Mark a live credential revoked (atomically, keeping its expiry)."""
        value = await self._call(
            self._revoke(keys=[self._k("cred", credential_id), self._k("lease", credential_id)])
        )
        if not value:
            return None
        record = credential_from_json(value)
        return record if record.expires_at > self._clock.time() else None

    async def agent_credentials(self, agent: str) -> list[CredentialRecord]:
        """Live credentials of an agent."""
        now = self._clock.time()
        ids = await self._call(self._redis.zrangebyscore(self._k("agentcreds", agent), now, "+inf"))
        if not ids:
            return []
        values = await self._call(self._redis.mget([self._k("cred", _text(i)) for i in ids]))
        return [credential_from_json(v) for v in values if v is not None]

    async def revoke_agent(self, agent: str, until: float) -> None:
        """Refuse an agent until `until`."""
        key = self._k("revoked-agent", agent)
        await self._call(self._redis.set(key, str(until), pxat=math.ceil(until * 1000)))

    async def agent_revoked(self, agent: str) -> bool:
        """Whether an agent is revoked (one GET: every replica sees it at once)."""
        return bool(await self._call(self._redis.exists(self._k("revoked-agent", agent))))

    async def consume_limits(
        self, checks: Sequence[LimitCheck], member: str, now: float
    ) -> LimitResult:
        """Consume every limit atomically (one Lua script), or none."""
        if not checks:
            return LimitResult(allowed=True)
        keys: list[str] = []
        args: list[str | int | float] = [now, member]
        for check in checks:
            if check.kind == "rate":
                keys.append(self._k("rate", check.key))
                ends = 0.0
            else:
                bucket, ends = budget_key(check, now)
                keys.append(self._k("budget", bucket))
            args += [check.kind, check.limit, check.window_seconds, check.cost, ends]
        index, retry = await self._call(self._consume(keys=keys, args=args))
        if int(index) == 0:
            return LimitResult(allowed=True)
        refused = checks[int(index) - 1]
        return LimitResult(
            allowed=False,
            key=refused.key,
            kind=refused.kind,
            retry_after=max(1, math.ceil(float(retry))),
        )

    async def refund_limits(self, checks: Sequence[LimitCheck], member: str, now: float) -> None:
        """Give back what `member` consumed."""
        async with self._redis.pipeline(transaction=True) as pipe:
            for check in checks:
                if check.kind == "rate":
                    pipe.zrem(
                        self._k("rate", check.key),
                        *[f"{member}:{j}" for j in range(1, check.cost + 1)],
                    )
                else:
                    bucket, _ = budget_key(check, now)
                    pipe.decrby(self._k("budget", bucket), check.cost)
            await self._call(pipe.execute())

    async def first_use(self, key: str, until: float) -> bool:
        """Record `key` (SET NX); False if it was already there."""
        return bool(
            await self._call(
                self._redis.set(self._k("seen", key), "1", nx=True, pxat=math.ceil(until * 1000))
            )
        )

    async def leases_to_release(self, now: float) -> list[CredentialRecord]:
        """Leases past expiry, or revoked, that Vault has not released yet."""
        expired = await self._call(self._redis.zrangebyscore(self._k("leases"), "-inf", now))
        all_ids = await self._call(self._redis.zrange(self._k("leases"), 0, -1))
        out: list[CredentialRecord] = []
        expired_set = set(expired)
        for raw in all_ids:
            value = await self._call(self._redis.get(self._k("lease", _text(raw))))
            if value is None:
                continue
            record = credential_from_json(value)
            if raw in expired_set or record.revoked:
                out.append(record)
        return out

    async def lease_released(self, credential_id: str) -> None:
        """Forget a released lease."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._k("lease", credential_id))
            pipe.zrem(self._k("leases"), credential_id)
            await self._call(pipe.execute())

    async def _call(self, awaitable: Awaitable[T]) -> T:
        try:
            return await awaitable
        except (RedisError, OSError) as exc:
            raise Unavailable("the state store (Redis) is unavailable") from exc


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
