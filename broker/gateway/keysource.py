"""Key sources: where the gateway reads each upstream's real key.

Both implementations keep the key for `cache_seconds` at most, then read it again: a
rotated key is in use within that TTL. Concurrent requests after expiry share one read.
A failed read raises `Unavailable` (the gateway answers 503 and forwards nothing); the key
never enters a log, an error or a repr (it is held as a `Secret`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from broker.domain import Secret
from broker.errors import Unavailable
from broker.gateway.config import KeySourceSettings
from broker.typing import Clock, KeySource

if TYPE_CHECKING:
    from broker.vault.client import VaultClient

__all__ = ["FileKeySource", "VaultKvKeySource", "create_key_source"]

log = structlog.get_logger(__name__)


class _Cached:
    """One key, remembered until its TTL ends; one read at a time refreshes it."""

    __slots__ = ("_clock", "_lock", "_read", "_ttl", "_until", "_value")

    def __init__(self, read: Callable[[], Awaitable[str]], ttl: float, clock: Clock) -> None:
        self._read = read
        self._ttl = ttl
        self._clock = clock
        self._value: Secret | None = None
        self._until = 0.0
        self._lock = asyncio.Lock()

    async def get(self) -> Secret:
        if self._value is not None and self._clock.time() < self._until:
            return self._value
        async with self._lock:
            if self._value is not None and self._clock.time() < self._until:
                return self._value
            value = (await self._read()).strip()
            if not value:
                raise Unavailable("the upstream key is empty", reason="key_unavailable")
            self._value = Secret(value)
            self._until = self._clock.time() + self._ttl
            return self._value


class FileKeySource:
    """The key is a file's content (a mounted Kubernetes Secret, for example)."""

    def __init__(self, path: Path, cache_seconds: float, clock: Clock) -> None:
        """Read `path` at most every `cache_seconds`."""
        self._path = path
        self._cache = _Cached(self._read, cache_seconds, clock)

    def __repr__(self) -> str:
        """Name the file, never the key."""
        return f"FileKeySource({str(self._path)!r})"

    async def start(self) -> None:
        """Nothing to open."""

    async def close(self) -> None:
        """Nothing to close."""

    async def key(self) -> Secret:
        """The file's content (stripped), cached.

        Raises:
            Unavailable: The file cannot be read or is empty.
        """
        return await self._cache.get()

    async def _read(self) -> str:
        try:
            return await asyncio.to_thread(self._path.read_text, "utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            log.warning(
                "upstream key file unreadable", file=str(self._path), error=type(exc).__name__
            )
            raise Unavailable("the upstream key cannot be read", reason="key_unavailable") from None


class VaultKvKeySource:
    """The key is a field of a KV v2 secret, read with the broker's Vault client."""

    def __init__(self, client: VaultClient, settings: KeySourceSettings, clock: Clock) -> None:
        """Read `settings.path` under `settings.mount` at most every `cache_seconds`."""
        self._client = client
        self._settings = settings
        self._cache = _Cached(self._read, settings.cache_seconds, clock)

    def __repr__(self) -> str:
        """Name the secret's path, never the key."""
        return f"VaultKvKeySource({self._settings.mount}/{self._settings.path})"

    async def start(self) -> None:
        """The client is opened by its owner."""

    async def close(self) -> None:
        """The client is closed by its owner."""

    async def key(self) -> Secret:
        """The secret's field, cached.

        Raises:
            Unavailable: Vault cannot be reached, refuses, or the field is missing.
        """
        return await self._cache.get()

    async def _read(self) -> str:
        settings = self._settings

        def read(client: Any) -> object:  # noqa: ANN401 - hvac is untyped
            response = client.secrets.kv.v2.read_secret_version(
                path=settings.path, mount_point=settings.mount, raise_on_deleted_version=True
            )
            return response["data"]["data"].get(settings.field)

        value = await self._client.call(read, what="gateway key read")
        if not isinstance(value, str):
            log.warning("upstream key field missing", path=settings.path, field=settings.field)
            raise Unavailable("the upstream key cannot be read", reason="key_unavailable")
        return value


def create_key_source(
    settings: KeySourceSettings, clock: Clock, vault: VaultClient | None
) -> KeySource:
    """The key source a route's settings describe.

    Raises:
        ValueError: A Vault source without a Vault client (configuration prevents it).
    """
    if settings.kind == "file":
        return FileKeySource(Path(settings.path), settings.cache_seconds, clock)
    if vault is None:
        msg = "a Vault key source needs the `vault:` section"
        raise ValueError(msg)
    return VaultKvKeySource(vault, settings, clock)
