"""The shared state store: Redis, for several broker replicas.

Every key expires on its own (EXPIREAT at the end of its useful life). Limits are checked
and consumed by one Lua script, so "60 per minute" holds across replicas: the script
checks every limit first and consumes them only if all admit the request.
Keys of one request may span several limits, so this targets a single Redis server
(neither Redis Cluster nor Sentinel discovery).

Losing Redis's data must not undo a revocation. The store writes an epoch marker (a
random id) once, and reads it with every revocation check. A marker that vanished or
changed means Redis lost its data (restarted without persistence, a failover to an empty
replica): the store puts back every agent revocation this replica knows
(`RevocationCopy`: those it made, those it read from Redis every `sync_seconds`, and
with `revocations_file` those of earlier runs), writes a new marker, and refuses requests
(503, not ready) for two sync periods, long enough for every other running replica to
notice the new marker and put back its own copy too. The sync also puts back any single
revocation Redis lost while the marker survived (a failover losing its last writes).

Pending human approvals live here too (`broker.state.redis.approvals`), so any replica
can answer for an approval another one took.
"""

from __future__ import annotations

import asyncio
import math
import secrets
from collections.abc import Awaitable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import redis.asyncio as aioredis
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from broker.domain import LimitCheck
from broker.errors import Unavailable
from broker.state.base import (
    ApprovalRecord,
    CredentialRecord,
    LimitResult,
    budget_key,
    credential_from_json,
    credential_to_json,
)
from broker.state.redis.approvals import RedisApprovals
from broker.state.redis.config import DEFAULT_SYNC_SECONDS
from broker.state.redis.revocations import RevocationCopy
from broker.tasks import stop_task
from broker.typing import Clock

__all__ = ["RedisStateStore"]

log = structlog.get_logger(__name__)

T = TypeVar("T")

LEASE_RETENTION_SECONDS = 7 * 86400
POOL_WAIT_SECONDS = 10.0
# The epoch marker outlives the longest agent revocation (366 days); every sync renews it.
EPOCH_SECONDS = 367 * 86400

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

# ARGV: member, then per key: kind, cost. A budget counter is decremented only while it
# exists, and never below zero: a refund gives back what was taken, never more (a counter
# created by a refund would have no expiry, and would admit beyond the limit).
_REFUND = """
local member = ARGV[1]
for i = 1, #KEYS do
  local kind = ARGV[2 + (i - 1) * 2]
  local cost = tonumber(ARGV[3 + (i - 1) * 2])
  if kind == 'rate' then
    for j = 1, cost do
      redis.call('ZREM', KEYS[i], member .. ':' .. j)
    end
  else
    local count = tonumber(redis.call('GET', KEYS[i]) or '0')
    if count > 0 then
      redis.call('DECRBY', KEYS[i], math.min(cost, count))
    end
  end
end
return 0
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
        revocations_file: Path | None = None,
        sync_seconds: float = DEFAULT_SYNC_SECONDS,
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
            revocations_file: This replica's durable copy of agent revocations (None:
                kept in memory only).
            sync_seconds: How often the copy and Redis are merged (and the refusal after
                a detected loss lasts twice this).
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
            # After a Redis restart every pooled connection is dead: retry a command once,
            # at once, on a fresh connection rather than answer 503 for each of them. Only
            # connection errors (a dead server refuses the retry at once, too); the rare
            # double execution this allows is harmless here (SETs, or over-counted limits).
            retry=Retry(NoBackoff(), 1),
            retry_on_error=[RedisConnectionError],
        )
        self._redis = aioredis.Redis(connection_pool=pool)
        self._clock = clock
        self._p = prefix
        self._consume = self._redis.register_script(_CONSUME)
        self._refund = self._redis.register_script(_REFUND)
        self._revoke = self._redis.register_script(_REVOKE)
        self._approvals = RedisApprovals(self._redis, lambda aid: self._k("approval", aid))
        self._copy = RevocationCopy(revocations_file)
        self._sync_seconds = sync_seconds
        self._epoch: str | None = None  # the marker this process last saw or wrote
        self._hold_until = 0.0  # refusing requests until then: a data loss is being repaired
        self._restoring = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._syncing = False
        self._closing = asyncio.Event()
        self._timeout = timeout_seconds

    def _k(self, *parts: str) -> str:
        return self._p + ":".join(parts)

    async def start(self) -> None:
        """Load the revocations file, check the epoch marker, start merging copies.

        An unreachable Redis is logged (readiness reports it); an unusable revocations
        file is not: the broker would run without the copy it was told to keep.

        Raises:
            Unavailable: The revocations file cannot be read or written.
        """
        kept = await self._copy.load(self._clock.time())
        if kept:
            log.info("agent revocations loaded from the revocations file", count=kept)
        if not await self.ping():
            log.warning("redis not reachable yet")
        self._task = asyncio.create_task(self._sync_loop(), name="redis-revocations-sync")

    async def close(self) -> None:
        """Stop merging copies; close connections."""
        self._closing.set()
        if self._task is not None and self._syncing:
            # Let a running sync end by itself: redis-py can hang a task cancelled in the
            # middle of a command (redis/redis-py#2579, #4121). Its commands time out anyway.
            await asyncio.wait({self._task}, timeout=self._timeout + 1)
        await stop_task(self._task)
        self._task = None
        await self._redis.aclose()
        self._copy.close()

    async def ping(self) -> bool:
        """Whether Redis answers and holds its data (no loss being repaired)."""
        try:
            await self._check_epoch()
        except Unavailable:
            return False
        return self._clock.time() >= self._hold_until

    # -- surviving a loss of Redis's data ---------------------------------------------------

    async def _check_epoch(self, seen: object = None, *, fetched: bool = False) -> None:
        """Compare the marker with ours; repair a loss (see the module docstring).

        Raises:
            Unavailable: Redis is unreachable.
        """
        if not fetched:
            seen = await self._call(self._redis.get(self._k("epoch")))
        if seen is None or _text(seen) != self._epoch:
            await self._restore()

    async def _restore(self) -> None:
        async with self._restoring:
            key = self._k("epoch")
            current = await self._call(self._redis.get(key))
            marker = None if current is None else _text(current)
            if marker is not None and marker == self._epoch:
                return  # another request of this process repaired it meanwhile
            now = self._clock.time()
            known = self._copy.active(now)
            # Ours vanished or changed: lost. None seen yet (start-up): lost only if Redis
            # has no marker while we remember revocations (a file, or an earlier epoch).
            lost = self._epoch is not None or (marker is None and bool(known))
            if known:
                await self._reassert(known)
            if marker is None:
                fresh = secrets.token_hex(16)
                created = await self._call(self._redis.set(key, fresh, nx=True, ex=EPOCH_SECONDS))
                current = fresh if created else await self._call(self._redis.get(key))
                if current is None:
                    raise Unavailable("the state store (Redis) is losing its data")
                marker = _text(current)
            self._epoch = marker
            if lost:
                self._hold_until = now + 2 * self._sync_seconds
                log.error(
                    "the state store (Redis) lost its data: agent revocations put back; "
                    "requests refused until every replica has put back its copy",
                    restored=len(known),
                    refusing_seconds=2 * self._sync_seconds,
                )

    async def _reassert(self, revocations: Mapping[str, float]) -> None:
        """Write agent revocations (back) into Redis: the key checked, and the index."""
        index = self._k("revoked-agents")
        pipe: Any
        async with self._redis.pipeline(transaction=True) as pipe:
            for agent, until in revocations.items():
                pipe.set(self._k("revoked-agent", agent), str(until), pxat=math.ceil(until * 1000))
            pipe.zadd(index, dict(revocations), gt=True)
            last = math.ceil(max(revocations.values()))
            pipe.expireat(index, last, gt=True)
            pipe.expireat(index, last, nx=True)
            await self._call(pipe.execute())

    def _refuse_while_restoring(self) -> None:
        wait = self._hold_until - self._clock.time()
        if wait > 0:
            raise Unavailable(
                "the state store (Redis) lost its data; agent revocations are being restored",
                retry_after=max(1, math.ceil(wait)),
                reason="state_restoring",
            )

    async def sync(self) -> None:
        """Merge this replica's copy of the agent revocations with Redis's, both ways.

        Raises:
            Unavailable: Redis is unreachable, or the revocations file cannot be written.
        """
        await self._check_epoch()
        now = self._clock.time()
        index = self._k("revoked-agents")
        pipe: Any
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zremrangebyscore(index, "-inf", now)
            pipe.zrangebyscore(index, now, "+inf", withscores=True)
            pipe.expire(self._k("epoch"), EPOCH_SECONDS)
            _, listed, _ = await self._call(pipe.execute())
        theirs = {_text(agent): float(until) for agent, until in listed}
        self._copy.prune(now)
        missing = {a: u for a, u in self._copy.active(now).items() if theirs.get(a, 0.0) < u}
        if missing:
            log.warning("agent revocations missing from Redis were put back", count=len(missing))
            await self._reassert(missing)
        await self._copy.add(theirs)

    async def _sync_loop(self) -> None:
        while not self._closing.is_set():
            await self._clock.sleep(self._sync_seconds)  # cancelled here when closing
            if self._closing.is_set():
                return
            self._syncing = True
            try:
                await self.sync()
            except Unavailable as exc:
                log.debug("revocations sync skipped", reason=exc.detail)
            finally:
                self._syncing = False

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
        """Refuse an agent until `until` (in Redis, and in this replica's copy)."""
        await self._reassert({agent: until})
        await self._copy.add({agent: until})

    async def agent_revoked(self, agent: str) -> bool:
        """Whether an agent is revoked: this replica's copy, else one round trip to Redis.

        The round trip also reads the epoch marker, so a loss of Redis's data is noticed
        by the first request after it, before any revocation could be missed.
        """
        if self._copy.revoked(agent, self._clock.time()):
            return True
        self._refuse_while_restoring()
        pipe: Any
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(self._k("epoch"))
            pipe.exists(self._k("revoked-agent", agent))
            marker, exists = await self._call(pipe.execute())
        if marker is None or _text(marker) != self._epoch:
            await self._check_epoch(marker, fetched=True)
            self._refuse_while_restoring()
            exists = await self._call(self._redis.exists(self._k("revoked-agent", agent)))
        return bool(exists)

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
        """Give back what `member` consumed (one Lua script: atomic, never below zero)."""
        if not checks:
            return
        keys: list[str] = []
        args: list[str | int] = [member]
        for check in checks:
            if check.kind == "rate":
                keys.append(self._k("rate", check.key))
            else:
                bucket, _ = budget_key(check, now)
                keys.append(self._k("budget", bucket))
            args += [check.kind, check.cost]
        await self._call(self._refund(keys=keys, args=args))

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

    # -- approvals --------------------------------------------------------------------------

    async def put_approval(self, record: ApprovalRecord) -> None:
        """Remember a pending approval until a day after it lapses."""
        await self._call(self._approvals.put(record))

    async def get_approval(self, approval_id: str) -> ApprovalRecord | None:
        """An approval, or None."""
        return await self._call(self._approvals.get(approval_id))

    async def set_approval_status(
        self,
        approval_id: str,
        *,
        expected: str,
        status: str,
        approver: str | None = None,
        reason: str | None = None,
    ) -> ApprovalRecord | None:
        """Compare-and-set the status in one Lua script (one winner across replicas)."""
        return await self._call(
            self._approvals.set_status(
                approval_id, expected=expected, status=status, approver=approver, reason=reason
            )
        )

    async def _call(self, awaitable: Awaitable[T]) -> T:
        try:
            return await awaitable
        except (RedisError, OSError) as exc:
            raise Unavailable("the state store (Redis) is unavailable") from exc


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
