"""`state:` keys of the Redis store (`backend: redis`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from broker.config.reader import Reader

__all__ = ["RedisSettings", "parse_redis"]

DEFAULT_PREFIX = "broker:"
DEFAULT_SYNC_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """A Redis server shared by the replicas.

    Attributes:
        url: `redis://`, `rediss://` or `unix://` URL.
        password_file: File holding the password.
        key_prefix: Prefix of every key (several brokers may share one Redis).
        revocations_file: This replica's durable copy of the agent revocations, put back
            into Redis if Redis loses them; None keeps the copy in memory only.
        sync_seconds: How often a replica merges its copy with Redis's; after a detected
            loss of Redis's data, requests are refused for twice this.
    """

    url: str
    password_file: Path | None = None
    key_prefix: str = DEFAULT_PREFIX
    revocations_file: Path | None = None
    sync_seconds: float = DEFAULT_SYNC_SECONDS


def parse_redis(reader: Reader) -> RedisSettings:
    """Read the Redis store's keys of the `state:` section."""
    url = reader.string("url", max_length=2048)
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise reader.error("url", "must be a redis://, rediss:// or unix:// URL")
    return RedisSettings(
        url=url,
        password_file=reader.optional_path("password_file"),
        key_prefix=reader.string("key_prefix", DEFAULT_PREFIX, pattern=r"[A-Za-z0-9:_.-]{1,64}"),
        revocations_file=reader.optional_path("revocations_file"),
        sync_seconds=reader.number("sync_seconds", DEFAULT_SYNC_SECONDS, minimum=0.1, maximum=60),
    )
