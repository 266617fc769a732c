"""Verify once, remember safely: successful verifications, by a digest of what was presented.

An agent keeps presenting the same X.509-SVID (on every request of a kept-alive
connection, and on every new connection) and the same JWT-SVID (until it fetches the
next); a user's token rides along on every request and exchange of that user's session.
Verifying each again costs hundreds of microseconds for the same answer. A success is
remembered under a digest of what was presented (the leaf certificate's DER, whose holder
proved the key in the TLS handshake; the whole JWT) and reused only:
- while what was verified is valid (never past its expiry, nor past `max_age`),
- under the keys it was verified with (the SVID cache is cleared on any bundle rotation;
  the user-token cache checks that the verifying key is still the issuer's).
Failures are never remembered, and agent revocation is checked by the caller on every
request, cached or not. The cache is bounded; the oldest entries go first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["VerifiedCache"]

DEFAULT_MAX_ENTRIES = 10_000
DEFAULT_MAX_AGE_SECONDS = 300.0

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Entry(Generic[T]):
    value: T
    until: float


class VerifiedCache(Generic[T]):
    """Successful verifications by digest, bounded in size and in time.

    Attributes:
        hits: Answers given from the cache.
        misses: Lookups that found nothing usable (the caller then verifies).
    """

    __slots__ = ("_entries", "_max_age", "_max_entries", "hits", "misses")

    def __init__(
        self,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_age: float = DEFAULT_MAX_AGE_SECONDS,
    ) -> None:
        """Create an empty cache (`max_entries=0` remembers nothing)."""
        self._entries: dict[bytes, _Entry[T]] = {}
        self._max_entries = max_entries
        self._max_age = max_age
        self.hits = 0
        self.misses = 0

    def get(self, key: bytes, now: float) -> T | None:
        """The remembered value for `key`, if still usable at `now`."""
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        if now >= entry.until:
            del self._entries[key]
            self.misses += 1
            return None
        self.hits += 1
        return entry.value

    def put(self, key: bytes, value: T, *, expires_at: float, now: float) -> None:
        """Remember a successful verification until `expires_at` (or `max_age` from now)."""
        until = min(expires_at, now + self._max_age)
        if until <= now or self._max_entries <= 0:
            return
        if len(self._entries) >= self._max_entries:
            del self._entries[next(iter(self._entries))]
        self._entries[key] = _Entry(value, until)

    def forget(self, key: bytes) -> None:
        """Drop one entry (it no longer verifies)."""
        self._entries.pop(key, None)

    def clear(self) -> None:
        """Forget everything (the trust bundles changed)."""
        self._entries.clear()

    def __len__(self) -> int:
        """How many entries are held."""
        return len(self._entries)
