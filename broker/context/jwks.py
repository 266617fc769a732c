"""Key sets of user-token issuers (`broker.typing.KeySet`): a file, or an HTTPS URL.

URL rules, because an identity provider outage must not become an outage here and a
token must not make us hammer the identity provider:
- the last good keys are never dropped: a failed or empty fetch keeps them;
- keys are refreshed when older than the refresh interval (lazily, on use);
- an unknown `kid` triggers at most one refetch per 30 s (key rotation at the IdP),
  never one per token; failed fetches are retried at the same pace;
- one fetch at a time (concurrent requests share it).
"""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path

import aiohttp
import structlog

from broker.identity.bundles import parse_jwks
from broker.identity.material import IdentityError, PublicKey
from broker.typing import Clock

__all__ = ["FileKeySet", "UrlKeySet"]

log = structlog.get_logger(__name__)

UNKNOWN_KID_REFETCH_SECONDS = 30.0
MAX_JWKS_BYTES = 1024 * 1024
FETCH_TIMEOUT_SECONDS = 5.0


class FileKeySet:
    """A JWKS file, re-read when it changes."""

    def __init__(self, path: Path, clock: Clock) -> None:
        """Create the key set (nothing is read until used)."""
        self._path = path
        self._clock = clock
        self._stamp: tuple[int, int] | None = None
        self._keys: dict[str, PublicKey] = {}
        self._checked = 0.0

    def _load_if_changed(self) -> None:
        now = self._clock.time()
        if self._stamp is not None and now - self._checked < 1.0:
            return
        self._checked = now
        try:
            st = self._path.stat()
        except OSError:
            if not self._keys:
                raise IdentityError(f"JWKS file {self._path} cannot be read") from None
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        try:
            document = json.loads(self._path.read_bytes())
            keys = parse_jwks(document, what=str(self._path))
        except (OSError, ValueError, IdentityError) as exc:
            if not self._keys:
                raise IdentityError(f"JWKS file {self._path} is not usable: {exc}") from None
            log.warning("JWKS file changed but is not usable; keeping keys", path=str(self._path))
            return
        if keys:
            self._keys = keys
            self._stamp = stamp

    async def keys(self, kid: str | None) -> dict[str, PublicKey]:
        """Keys of the file (re-read at most once a second; `kid` needs no refetch)."""
        del kid
        self._load_if_changed()
        if not self._keys:
            raise IdentityError(f"JWKS file {self._path} holds no keys")
        return self._keys

    async def start(self) -> None:
        """Read the file once; a problem is logged and retried on use."""
        try:
            self._load_if_changed()
        except IdentityError as exc:
            log.warning("user-token JWKS not loaded yet", reason=str(exc))

    async def close(self) -> None:
        """Nothing to release."""


class UrlKeySet:
    """A JWKS fetched over HTTPS and cached."""

    def __init__(
        self,
        url: str,
        clock: Clock,
        *,
        refresh_seconds: float,
        ca_file: Path | None = None,
    ) -> None:
        """Create the key set.

        Args:
            url: The `https://` JWKS URL.
            clock: For cache ages.
            refresh_seconds: Refresh keys older than this.
            ca_file: CA bundle to verify the server (default: the system's).
        """
        self._url = url
        self._clock = clock
        self._refresh = refresh_seconds
        self._ssl = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        self._keys: dict[str, PublicKey] = {}
        self._fetched_at: float | None = None
        self._last_attempt = -UNKNOWN_KID_REFETCH_SECONDS
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        self.fetches = 0

    async def start(self) -> None:
        """Fetch once; failure is logged (keys are fetched again on use)."""
        await self._fetch()

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _fetch(self) -> None:
        async with self._lock:
            self._last_attempt = self._clock.time()
            self.fetches += 1
            if self._session is None:
                self._session = aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT_SECONDS),
                    connector=aiohttp.TCPConnector(ssl=self._ssl),
                )
            try:
                async with self._session.get(self._url, allow_redirects=False) as resp:
                    if resp.status != 200:  # noqa: PLR2004
                        raise IdentityError(f"HTTP {resp.status}")
                    body = await resp.content.read(MAX_JWKS_BYTES + 1)
                if len(body) > MAX_JWKS_BYTES:
                    raise IdentityError("JWKS document too large")
                document = json.loads(body)
                if not isinstance(document, dict):
                    raise IdentityError("JWKS document is not an object")
                keys = parse_jwks(document, what=self._url)
                if not keys:
                    raise IdentityError("JWKS document holds no keys")
            except (aiohttp.ClientError, TimeoutError, ValueError, IdentityError) as exc:
                # Keep the last good keys: an IdP hiccup must not reject every user.
                log.warning(
                    "user-token JWKS fetch failed; keeping last good keys",
                    url=self._url,
                    reason=str(exc) or type(exc).__name__,
                    cached_keys=len(self._keys),
                )
                return
            self._keys = keys
            self._fetched_at = self._clock.time()

    async def keys(self, kid: str | None) -> dict[str, PublicKey]:
        """Keys to try, refreshed when stale or when `kid` is unknown (throttled)."""
        now = self._clock.time()
        stale = self._fetched_at is None or now - self._fetched_at >= self._refresh
        unknown = kid is not None and kid not in self._keys
        # Every fetch attempt (stale keys, unknown kid, or a retry after failure) is
        # throttled, so neither tokens nor a failing IdP can make us fetch in a loop.
        if (stale or unknown) and now - self._last_attempt >= UNKNOWN_KID_REFETCH_SECONDS:
            await self._fetch()
        if not self._keys:
            raise IdentityError(f"no keys could be fetched from {self._url}")
        return self._keys
