"""Verify once, remember safely: successful SVID verifications, by what was presented.

An agent keeps presenting the same X.509-SVID (on every request of a kept-alive
connection, and on every new connection) and the same JWT-SVID (until it fetches the
next); verifying each again costs hundreds of microseconds for the same answer. A
success is remembered under a digest of what was presented (the leaf certificate's DER:
its holder proved the key in the TLS handshake; the whole JWT-SVID) and reused only:
- while the SVID is valid (never past its expiry, nor past `max_age`),
- under the trust bundles it was verified with (any rotation forgets everything).
Failures are never remembered, and agent revocation is checked by the caller on every
request, cached or not. The cache is bounded; the oldest entries go first.
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.domain import Caller

__all__ = ["VerifiedCache"]

DEFAULT_MAX_ENTRIES = 10_000
DEFAULT_MAX_AGE_SECONDS = 300.0


@dataclass(frozen=True, slots=True)
class _Entry:
    caller: Caller
    until: float


class VerifiedCache:
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
        """Create an empty cache."""
        self._entries: dict[bytes, _Entry] = {}
        self._max_entries = max_entries
        self._max_age = max_age
        self.hits = 0
        self.misses = 0

    def get(self, key: bytes, now: float) -> Caller | None:
        """The remembered caller for `key`, if still usable at `now`."""
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        if now >= entry.until:
            del self._entries[key]
            self.misses += 1
            return None
        self.hits += 1
        return entry.caller

    def put(self, key: bytes, caller: Caller, now: float) -> None:
        """Remember a successful verification until the SVID expires (or `max_age`)."""
        until = min(caller.expires_at.timestamp(), now + self._max_age)
        if until <= now:
            return
        if len(self._entries) >= self._max_entries:
            del self._entries[next(iter(self._entries))]
        self._entries[key] = _Entry(caller, until)

    def clear(self) -> None:
        """Forget everything (the trust bundles changed)."""
        self._entries.clear()

    def __len__(self) -> int:
        """How many entries are held."""
        return len(self._entries)
