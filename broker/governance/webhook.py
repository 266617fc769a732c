"""The approval webhook: a pending approval announced to a URL, signed with the broker's key.

The body is a compact JWS (`Content-Type: application/jwt`, header `typ: approval+jwt`)
signed with the broker's current token key, so a receiver verifies it with the broker's
JWKS (`/.well-known/jwks.json`) like any token the broker issues. Claims: `iss`, `iat`,
`exp` (when the approval lapses), `jti` (the approval id), `event`
(`approval.requested`), `approval_id`, `decision_id`, `agent`, `user` (`iss`, `sub`),
`tools`, `ttl_requested`. Sent in the background (the 202 does not wait), once, with a
timeout; a failure is logged, and the approval still waits for a decision.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import Callable

import structlog

from broker.state.base import ApprovalRecord
from broker.tasks import stop_task
from broker.typing import Clock

__all__ = ["WEBHOOK_TYPE", "ApprovalWebhook"]

log = structlog.get_logger(__name__)

WEBHOOK_TYPE = "approval+jwt"


class ApprovalWebhook:
    """Announces pending approvals to one URL."""

    def __init__(
        self,
        url: str,
        sign: Callable[[dict[str, object], str], str],
        clock: Clock,
        timeout: float = 5.0,
    ) -> None:
        """Args: the URL, the broker's signer, the clock, the per-call timeout (seconds)."""
        self._url = url
        self._sign = sign
        self._clock = clock
        self._timeout = timeout
        self._tasks: set[asyncio.Task[None]] = set()

    def body(self, record: ApprovalRecord) -> bytes:
        """The signed announcement of `record`."""
        claims: dict[str, object] = {
            "iat": int(self._clock.time()),
            "exp": int(record.expires_at),
            "jti": record.approval_id,
            "event": "approval.requested",
            "approval_id": record.approval_id,
            "decision_id": record.decision_id,
            "agent": record.agent,
            "user": (
                {"iss": record.user.issuer, "sub": record.user.subject} if record.user else None
            ),
            "tools": list(record.tools),
            "ttl_requested": record.ttl_requested,
        }
        return self._sign(claims, WEBHOOK_TYPE).encode()

    def announce(self, record: ApprovalRecord) -> None:
        """Send in the background (never delays or fails the request)."""
        task = asyncio.get_running_loop().create_task(self._send(self.body(record)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, body: bytes) -> None:
        try:
            await asyncio.to_thread(self._post, body)
        except (OSError, urllib.error.URLError) as exc:
            log.warning("approval webhook failed", url=self._url, reason=str(exc)[:200])

    def _post(self, body: bytes) -> None:
        request = urllib.request.Request(  # noqa: S310 - the URL is validated configuration
            self._url,
            data=body,
            headers={"Content-Type": "application/jwt"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=self._timeout) as response:  # noqa: S310
            response.read(1024)

    async def close(self) -> None:
        """Wait for nothing: stop what is still being sent."""
        for task in list(self._tasks):
            await stop_task(task)
