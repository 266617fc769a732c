"""The shared state store (`backend: redis`): one Redis server, many replicas."""

from __future__ import annotations

from broker.config.reader import Reader
from broker.state.redis.config import RedisSettings, parse_redis
from broker.typing import Clock, StateStore

__all__ = ["FACTORY"]


class _Factory:
    kind = "redis"

    def parse(self, reader: Reader) -> RedisSettings:
        return parse_redis(reader)

    def build(self, settings: object, clock: Clock) -> StateStore:
        assert isinstance(settings, RedisSettings)
        # The redis client (and what it pulls in) loads only for a broker that uses it.
        from broker.state.redis.store import RedisStateStore  # noqa: PLC0415

        return RedisStateStore(
            settings.url,
            clock,
            prefix=settings.key_prefix,
            password_file=settings.password_file,
            revocations_file=settings.revocations_file,
            sync_seconds=settings.sync_seconds,
        )


FACTORY = _Factory()
