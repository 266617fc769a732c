"""The hook's loop: fetch, write, then (sidecar) refresh, check, notify, until stopped.

    fetch (retry with backoff until --timeout) -> write every output -> notify -> health
    sidecar: loop
        drop expired credentials
        every --check-interval: introspect each held token; remove inactive (revoked) ones
        at half-life, or when a tool has no credential: request; retry with backoff
        sleep until the next of those moments
    on stop: revoke what is held, remove it from the outputs

A refusal (400/401/403: the agent is revoked, the policy or the user's authority changed)
removes every credential from the outputs and ends the hook with exit code 5; transient
failures (network, 5xx, 429, an SVID being rotated) are retried with jittered exponential
backoff while the credentials on disk stay valid.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog

from broker.hook.backoff import Backoff
from broker.hook.errors import (
    EXIT_RATE_LIMITED,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    HookError,
)
from broker.hook.health import Health
from broker.hook.model import BrokerResponse, Credential, parse_issued
from broker.hook.notify import Notifier
from broker.hook.typing import Broker, Output

__all__ = ["Hook", "HookConfig"]

log = structlog.get_logger("broker.hook")

#: Minimum time between two refreshes of a credential, whatever its TTL.
MIN_REFRESH_SECONDS = 1.0
#: Clock differences with the broker below this are ignored (HTTP dates are whole seconds).
SKEW_TOLERANCE_SECONDS = 5.0


class Waiter(Protocol):
    """`threading.Event`: `wait(timeout)` returns True once stopped."""

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep up to `timeout` seconds; True if stopped."""
        ...


@dataclass(frozen=True, slots=True)
class HookConfig:
    """What to ask for and how to behave."""

    tools: tuple[str, ...]
    sidecar: bool = False
    ttl: int | None = None
    reason: str | None = None
    user_token_file: Path | None = None
    timeout: float = 60.0
    check_interval: float = 30.0
    revoke_on_exit: bool = True


class Hook:
    """One hook process's work, with every dependency injected."""

    def __init__(
        self,
        config: HookConfig,
        broker: Broker,
        output: Output,
        *,
        health: Health,
        notifier: Notifier,
        backoff: Backoff,
        stop: Waiter,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Wire it."""
        self._config = config
        self._broker = broker
        self._output = output
        self._health = health
        self._notifier = notifier
        self._backoff = backoff
        self._stop = stop
        self._clock = clock
        self.held: dict[str, Credential] = {}

    def run(self) -> int:
        """Init: fetch and write once. Sidecar: then keep fresh until stopped.

        Returns:
            0 (failures raise).

        Raises:
            HookError: With the exit code of the failure.
        """
        tools = self._config.tools
        self._accept(self.fetch_until(tools, self._clock() + self._config.timeout))
        if not self._config.sidecar:
            return 0
        self._loop()
        if self._config.revoke_on_exit:
            self.revoke_held()
        return 0

    # -- requests -------------------------------------------------------------------------

    def request(self, tools: Sequence[str]) -> list[Credential]:
        """Ask once for credentials for `tools`.

        Raises:
            HookError: Refused (5), rate limited (6), unreachable or failing (4), ...
        """
        response = self._broker.post_json("/v1/credentials", self._body(tools))
        return self._issued(response, tools)

    def fetch_until(self, tools: Sequence[str], deadline: float) -> list[Credential]:
        """Request, retrying transient failures with backoff until `deadline`.

        Raises:
            HookError: A refusal at once; a transient failure once `deadline` has passed.
        """
        attempt = 0
        while True:
            try:
                return self.request(tools)
            except HookError as exc:
                if not exc.transient or self._clock() >= deadline:
                    raise
                delay = min(
                    self._backoff.delay(attempt, exc.retry_after),
                    max(0.0, deadline - self._clock()),
                )
                attempt += 1
                log.warning("broker cannot issue yet; retrying", reason=str(exc), retry_in=delay)
                if self._stop.wait(delay):
                    raise

    def _body(self, tools: Sequence[str]) -> dict[str, Any]:
        body: dict[str, Any] = {"tools": list(tools)}
        if self._config.ttl:
            body["ttl_seconds"] = self._config.ttl
        if self._config.reason:
            body["reason"] = self._config.reason
        if self._config.user_token_file is not None:
            try:
                body["user_token"] = self._config.user_token_file.read_text().strip()
            except OSError as exc:
                raise HookError(
                    EXIT_USAGE, f"cannot read --user-token-file: {exc.strerror}"
                ) from None
        return body

    def _issued(self, response: BrokerResponse, tools: Sequence[str]) -> list[Credential]:
        status = response.status
        if status == 201:  # noqa: PLR2004
            now = self._clock()
            issued = {
                c.tool: c
                for c in parse_issued(
                    response.body, received_at=now, skew=self._skew(response, now)
                )
            }
            missing = [t for t in tools if t not in issued]
            if missing:
                raise HookError(EXIT_UNREACHABLE, f"the broker issued nothing for {missing}")
            return [issued[t] for t in tools]
        detail = response.member("detail") or response.member("error_description")
        if status == 429:  # noqa: PLR2004
            raise HookError(
                EXIT_RATE_LIMITED,
                f"broker answered 429: {detail}",
                retry_after=response.retry_after,
            )
        if status == 202:  # noqa: PLR2004
            raise HookError(
                EXIT_REFUSED, "the policy requires an approval, which broker-hook does not wait for"
            )
        if 400 <= status < 500 and status != 408:  # noqa: PLR2004
            reasons = response.member("reasons")
            raise HookError(EXIT_REFUSED, f"broker refused ({status}): {detail}; reasons {reasons}")
        raise HookError(
            EXIT_UNREACHABLE,
            f"broker answered {status}: {detail}",
            retry_after=response.retry_after,
        )

    @staticmethod
    def _skew(response: BrokerResponse, now: float) -> float:
        """Our clock minus the broker's, when they differ enough to matter.

        `Date` has a resolution of one second, so small differences are ignored; a large
        one would otherwise make credentials look expired (or fresh) on arrival.
        """
        if response.date is None or abs(now - response.date) < SKEW_TOLERANCE_SECONDS:
            return 0.0
        log.warning(
            "our clock differs from the broker's; expiries adjusted",
            skew=round(now - response.date),
        )
        return now - response.date

    # -- the sidecar loop -----------------------------------------------------------------

    def _loop(self) -> None:
        attempt = 0
        retry_at = 0.0
        check_at = self._clock() + self._config.check_interval
        while True:
            now = self._clock()
            self._drop_expired(now)
            if self._config.check_interval > 0 and now >= check_at:
                self.check_active()
                check_at = self._clock() + self._config.check_interval
            due = self._due_tools(now)
            if due and now >= retry_at:
                try:
                    credentials = self.request(due)
                except HookError as exc:
                    if exc.code == EXIT_REFUSED:
                        self._remove(list(self.held), "refused by the broker")
                        raise
                    if exc.code == EXIT_USAGE:  # e.g. the user token file is gone
                        raise
                    retry_at = self._clock() + self._backoff.delay(attempt, exc.retry_after)
                    attempt += 1
                    log.warning(
                        "refresh failed; the current credentials stay until they expire",
                        reason=str(exc),
                        retry_in=round(retry_at - self._clock(), 3),
                    )
                else:
                    attempt, retry_at = 0, 0.0
                    self._accept(credentials)
            self._health.sync()
            wake = self._next_wake(retry_at, check_at)
            if self._stop.wait(max(0.0, wake - self._clock())):
                return

    def _refresh_time(self, credential: Credential) -> float:
        return max(credential.refresh_at, credential.received_at + MIN_REFRESH_SECONDS)

    def _due_tools(self, now: float) -> list[str]:
        """All tools at half-life of any credential (one request); else the missing ones."""
        if any(self._refresh_time(c) <= now for c in self.held.values()):
            return list(self._config.tools)
        return [t for t in self._config.tools if t not in self.held]

    def _next_wake(self, retry_at: float, check_at: float) -> float:
        now = self._clock()
        moments = [c.expires_at for c in self.held.values()]
        if len(self.held) < len(self._config.tools):
            moments.append(max(now, retry_at))
        else:
            refresh = min(self._refresh_time(c) for c in self.held.values())
            moments.append(max(refresh, retry_at))
        if self._config.check_interval > 0:
            moments.append(check_at)
        stale_at = self._health.stale_at()
        if stale_at is not None and stale_at > now:
            moments.append(stale_at)
        return min(moments)

    # -- what is held ---------------------------------------------------------------------

    def _accept(self, credentials: Sequence[Credential]) -> None:
        for credential in credentials:
            self.held[credential.tool] = credential
        self._output.write(self.held)
        for credential in credentials:
            log.info(
                "credential written",
                tool=credential.tool,
                type=credential.type,
                expires_at=str(credential.document.get("expires_at")),
                decision_id=credential.decision_id,
            )
        self._health.update(self.held, refreshed=True)
        self._notifier.notify("written")

    def _remove(self, tools: Sequence[str], why: str, *, on_exit: bool = False) -> None:
        removed = [self.held.pop(t) for t in tools if t in self.held]
        if not removed:
            return
        self._output.write(self.held)
        emit = log.info if on_exit else log.warning
        for credential in removed:
            emit("credential removed", tool=credential.tool, type=credential.type, why=why)
        self._health.update(self.held, refreshed=False)
        if not on_exit:  # the agent is stopping too: no reload
            self._notifier.notify("removed")

    def _drop_expired(self, now: float) -> None:
        expired = [t for t, c in self.held.items() if c.expires_at <= now]
        self._remove(expired, "expired without a successful refresh")

    def check_active(self) -> None:
        """Introspect each held token; remove the inactive (revoked) ones.

        Credentials without a token (`vault`) cannot be introspected: the refresh's result
        decides for them. A 401 means the broker no longer accepts this workload at all
        (agent revoked): everything held is removed.
        """
        inactive: list[str] = []
        for tool, credential in list(self.held.items()):
            token = credential.token
            if token is None:
                continue
            try:
                response = self._broker.post_form("/v1/introspect", {"token": token})
            except HookError as exc:
                log.warning(
                    "introspection failed; keeping the credential", tool=tool, reason=str(exc)
                )
                continue
            if response.status == 401:  # noqa: PLR2004
                log.warning("the broker no longer accepts this workload (401)")
                inactive = list(self.held)
                break
            if response.status != 200 or not isinstance(response.body, dict):  # noqa: PLR2004
                log.warning(
                    "introspection failed; keeping the credential",
                    tool=tool,
                    status=response.status,
                )
                continue
            if response.body.get("active") is not True:
                inactive.append(tool)
        self._remove(inactive, "inactive at the broker (revoked)")

    def revoke_held(self) -> None:
        """Revoke the credentials this hook holds (pod shutdown) and remove them from disk."""
        revoked: list[str] = []
        for tool, credential in list(self.held.items()):
            try:
                response = self._broker.post_json(
                    "/v1/revoke", {"credential_id": credential.credential_id}
                )
            except HookError as exc:
                log.warning("could not revoke on exit", tool=tool, reason=str(exc))
                continue
            log.info("credential revoked on exit", tool=tool, status=response.status)
            if 200 <= response.status < 300:  # noqa: PLR2004
                revoked.append(tool)
        self._remove(revoked, "revoked on exit", on_exit=True)
