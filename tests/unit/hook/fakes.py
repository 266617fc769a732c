"""Test doubles for the hook's loop: a scripted broker, a clock-advancing waiter, outputs."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from broker.hook.backoff import Backoff
from broker.hook.errors import EXIT_UNREACHABLE, HookError
from broker.hook.health import Health
from broker.hook.hook import Hook, HookConfig
from broker.hook.model import BrokerResponse, Credential
from tests.support.clock import ManualClock

# What the scripted broker answers to POST /v1/credentials, in order ("ok" issues).
Step = str | int | BrokerResponse


@dataclass
class FakeBroker:
    clock: ManualClock
    script: list[Step] = field(default_factory=list)
    ttl: int = 100
    type: str = "jwt"
    inactive: set[str] = field(default_factory=set)
    introspect_status: int = 200
    calls: list[tuple[str, Any]] = field(default_factory=list)
    issued: int = 0
    behind: float = 0.0  # the broker's clock is this many seconds behind ours

    def now(self) -> float:
        return self.clock.time() - self.behind

    def post_json(self, path: str, body: Mapping[str, object]) -> BrokerResponse:
        self.calls.append((path, dict(body)))
        if path == "/v1/revoke":
            return BrokerResponse(200, {"revoked": True})
        step: Step = self.script.pop(0) if self.script else "ok"
        if isinstance(step, BrokerResponse):
            return step
        if step == "down":
            raise HookError(EXIT_UNREACHABLE, "broker unreachable: connection refused")
        if isinstance(step, int):
            return BrokerResponse(step, {"detail": f"status {step}", "reasons": ["r"]})
        tools = body["tools"]
        assert isinstance(tools, list)
        return BrokerResponse(201, self.issue(tools), date=float(int(self.now())))

    def issue(self, tools: list[str]) -> dict[str, Any]:
        self.issued += 1
        expires = datetime.fromtimestamp(self.now() + self.ttl, UTC).isoformat()
        credentials: list[dict[str, Any]] = []
        for tool in tools:
            item: dict[str, Any] = {
                "tool": tool,
                "type": self.type,
                "credential_id": f"id-{self.issued}-{tool}",
                "expires_at": expires,
            }
            if self.type == "vault":
                item["data"] = {"username": f"u{self.issued}", "password": f"pw-{self.issued}"}
            else:
                item["token"] = f"tok-{self.issued}-{tool}"
            credentials.append(item)
        return {"decision_id": f"d{self.issued}", "credentials": credentials}

    def post_form(self, path: str, form: Mapping[str, str]) -> BrokerResponse:
        self.calls.append((path, dict(form)))
        if self.introspect_status != 200:
            return BrokerResponse(self.introspect_status, {"detail": "no"})
        return BrokerResponse(200, {"active": form["token"] not in self.inactive})

    def paths(self) -> list[str]:
        return [path for path, _ in self.calls]


@dataclass
class Waiter:
    """`stop.wait`: advances the clock by the timeout; stops when `until` says so."""

    clock: ManualClock
    until: Callable[[], bool] = lambda: False
    max_waits: int = 200
    waits: list[float] = field(default_factory=list)

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout or 0.0)
        # ManualClock counts whole microseconds: round up, or a wait could end just short.
        self.clock.advance(math.ceil((timeout or 0.0) * 1e6) / 1e6)
        return self.until() or len(self.waits) >= self.max_waits


@dataclass
class RecordingOutput:
    """Keeps every state written: tool -> token (or credential id)."""

    writes: list[dict[str, str]] = field(default_factory=list)

    def write(self, held: Mapping[str, Credential]) -> None:
        self.writes.append({t: c.token or c.credential_id for t, c in held.items()})


@dataclass
class RecordingNotifier:
    events: list[str] = field(default_factory=list)

    def notify(self, event: str) -> None:
        self.events.append(event)


def upper_bound(a: float, b: float) -> float:
    """A `uniform` that always draws the ceiling (deterministic backoff)."""
    return b


@dataclass
class Rig:
    clock: ManualClock
    broker: FakeBroker
    waiter: Waiter
    output: RecordingOutput
    notifier: RecordingNotifier
    health: Health
    hook: Hook


def rig(
    *,
    tools: tuple[str, ...] = ("crm",),
    script: list[Step] | None = None,
    sidecar: bool = False,
    timeout: float = 10.0,
    check_interval: float = 0.0,
    ttl: int = 100,
    type: str = "jwt",  # noqa: A002
    stale_seconds: float = 5.0,
    revoke_on_exit: bool = False,
) -> Rig:
    clock = ManualClock()
    broker = FakeBroker(clock, list(script or []), ttl=ttl, type=type)
    waiter = Waiter(clock)
    output = RecordingOutput()
    notifier = RecordingNotifier()
    health = Health(tools, stale_seconds=stale_seconds, clock=clock.time)
    hook = Hook(
        HookConfig(
            tools=tools,
            sidecar=sidecar,
            timeout=timeout,
            check_interval=check_interval,
            revoke_on_exit=revoke_on_exit,
        ),
        broker,
        output,
        health=health,
        notifier=notifier,  # type: ignore[arg-type]
        backoff=Backoff(0.5, 4.0, uniform=upper_bound),
        stop=waiter,
        clock=clock.time,
    )
    return Rig(clock, broker, waiter, output, notifier, health, hook)
