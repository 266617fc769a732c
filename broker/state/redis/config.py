"""`state:` keys of the Redis store (`backend: redis`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from broker.config.reader import Reader

__all__ = ["RedisSettings", "parse_redis"]

DEFAULT_PREFIX = "broker:"


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """A Redis server shared by the replicas."""

    url: str
    password_file: Path | None = None
    key_prefix: str = DEFAULT_PREFIX


def parse_redis(reader: Reader) -> RedisSettings:
    """Read the Redis store's keys of the `state:` section."""
    url = reader.string("url", max_length=2048)
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise reader.error("url", "must be a redis://, rediss:// or unix:// URL")
    return RedisSettings(
        url=url,
        password_file=reader.optional_path("password_file"),
        key_prefix=reader.string("key_prefix", DEFAULT_PREFIX, pattern=r"[A-Za-z0-9:_.-]{1,64}"),
    )
