"""The hook's loop with a scripted broker and a hand-moved clock: retries, refresh, revocation."""

from __future__ import annotations

import pytest
import structlog

from broker.hook.errors import HookError
from broker.hook.model import BrokerResponse
from tests.unit.hook.fakes import rig


def test_transient_failures_are_retried_with_growing_jittered_delays() -> None:
    """503, network error, 502, then 201: three waits, each the backoff's ceiling (0.5, 1, 2)."""
    r = rig(script=[503, "down", 502, "ok"])
    assert r.hook.run() == 0
    assert r.waiter.waits == [0.5, 1.0, 2.0]
    assert r.output.writes == [{"crm": "tok-1-crm"}]
    assert r.notifier.events == ["written"]


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_denials_are_not_retried(status: int) -> None:
    """401/403 (and other 4xx) exit 5 after one request, without waiting, writing nothing."""
    r = rig(script=[status])
    with pytest.raises(HookError) as caught:
        r.hook.run()
    assert caught.value.code == 5
    assert r.broker.paths() == ["/v1/credentials"]
    assert r.waiter.waits == []
    assert r.output.writes == []


def test_unreachable_until_the_deadline_is_exit_4() -> None:
    """A broker failing past --timeout: exit 4, the last wait cut to the deadline."""
    r = rig(script=[503] * 50, timeout=3.0)
    with pytest.raises(HookError) as caught:
        r.hook.run()
    assert caught.value.code == 4
    assert r.waiter.waits == [0.5, 1.0, 1.5]  # 0.5 + 1 + 1.5 = the 3 s deadline


def test_rate_limit_waits_at_least_retry_after_then_exit_6() -> None:
    """429 with Retry-After 5: waits are never shorter than 5 s; exit 6 at the deadline."""
    limited = BrokerResponse(429, {"detail": "slow down"}, retry_after=5.0)
    r = rig(script=[limited, limited, limited], timeout=9.0)
    with pytest.raises(HookError) as caught:
        r.hook.run()
    assert caught.value.code == 6
    assert r.waiter.waits == [5.0, 4.0]  # the second is cut to the deadline


def test_sidecar_refreshes_at_half_life() -> None:
    """TTL 100 s: the next request is made 50 s after the first."""
    r = rig(sidecar=True, ttl=100)
    r.waiter.until = lambda: r.broker.issued >= 2
    r.hook.run()
    assert r.waiter.waits[0] == pytest.approx(50.0)
    assert r.output.writes[-1] == {"crm": "tok-2-crm"}
    assert r.notifier.events[:2] == ["written", "written"]


def test_sidecar_refresh_failures_back_off_and_keep_the_credential() -> None:
    """Failing refreshes are retried with backoff; the held credential stays written."""
    r = rig(sidecar=True, ttl=100, script=["ok", 503, "down", "ok"])
    r.waiter.until = lambda: r.broker.issued >= 2
    r.hook.run()
    assert r.waiter.waits[1:3] == [0.5, 1.0]
    assert all(write for write in r.output.writes), "the credential was removed meanwhile"
    assert r.output.writes[-1] == {"crm": "tok-2-crm"}


def test_expired_credentials_are_removed_when_refreshes_keep_failing() -> None:
    """The broker stays down: at expiry the credential leaves the outputs (health stale first)."""
    r = rig(sidecar=True, ttl=20, script=["ok", *["down"] * 100])
    statuses: list[bool] = []
    r.waiter.until = lambda: statuses.append(r.health.status().healthy) or r.output.writes[-1] == {}
    r.hook.run()
    assert r.output.writes[-1] == {}
    assert r.notifier.events[-1] == "removed"
    assert statuses[0] is True
    assert False in statuses


def test_revoked_token_is_removed_then_requested_again() -> None:
    """Introspection says inactive: removed from outputs, logged without the token, re-issued."""
    r = rig(sidecar=True, ttl=1000, check_interval=5.0, tools=("crm", "tickets"))
    r.waiter.until = lambda: r.broker.issued >= 2
    r.broker.inactive.add("tok-1-crm")
    with structlog.testing.capture_logs() as logs:
        r.hook.run()
    assert r.output.writes == [
        {"crm": "tok-1-crm", "tickets": "tok-1-tickets"},
        {"tickets": "tok-1-tickets"},
        {"crm": "tok-2-crm", "tickets": "tok-1-tickets"},
    ]
    assert r.notifier.events == ["written", "removed", "written"]
    assert r.broker.calls[-1] == ("/v1/credentials", {"tools": ["crm"]})
    removed = [e for e in logs if e["event"] == "credential removed"]
    assert removed == [
        {
            "event": "credential removed",
            "tool": "crm",
            "type": "jwt",
            "why": "inactive at the broker (revoked)",
            "log_level": "warning",
        }
    ]
    assert "tok-1-crm" not in repr(logs)


def test_vault_credentials_are_not_introspected_and_a_refused_refresh_removes_them() -> None:
    """No token to introspect: none is sent; a 401 at refresh removes the credential, exit 5."""
    r = rig(sidecar=True, ttl=100, check_interval=5.0, type="vault", script=["ok", 401])
    with pytest.raises(HookError) as caught:
        r.hook.run()
    assert caught.value.code == 5
    assert "/v1/introspect" not in r.broker.paths()
    assert r.output.writes == [{"crm": "id-1-crm"}, {}]


def test_introspection_401_means_the_agent_is_revoked() -> None:
    """401 on introspection: everything is removed; the re-request's 401 ends with exit 5."""
    r = rig(sidecar=True, ttl=1000, check_interval=5.0, tools=("a", "b"), script=["ok", 401])
    r.broker.introspect_status = 401
    with pytest.raises(HookError) as caught:
        r.hook.run()
    assert caught.value.code == 5
    assert r.output.writes == [{"a": "tok-1-a", "b": "tok-1-b"}, {}]
    assert r.broker.paths().count("/v1/introspect") == 1


def test_introspection_errors_keep_the_credential() -> None:
    """A 503 from introspection is no verdict: the credential stays."""
    r = rig(sidecar=True, ttl=1000, check_interval=5.0)
    r.broker.introspect_status = 503
    r.waiter.until = lambda: r.broker.paths().count("/v1/introspect") >= 3
    r.hook.run()
    assert r.output.writes == [{"crm": "tok-1-crm"}]


def test_stop_revokes_and_removes_what_is_held() -> None:
    """On stop the sidecar revokes each credential and removes it from the outputs."""
    r = rig(sidecar=True, tools=("a", "b"), revoke_on_exit=True)
    r.waiter.until = lambda: True
    r.hook.run()
    revoked = [body for path, body in r.broker.calls if path == "/v1/revoke"]
    assert revoked == [{"credential_id": "id-1-a"}, {"credential_id": "id-1-b"}]
    assert r.output.writes[-1] == {}
    assert r.notifier.events == ["written"]


def test_a_response_missing_a_tool_is_a_broker_failure() -> None:
    """201 without one of the requested tools is retried like a failing broker (exit 4)."""
    partial = BrokerResponse(
        201,
        {
            "decision_id": "d",
            "credentials": [
                {"tool": "a", "type": "jwt", "token": "t", "expires_at": "2999-01-01T00:00:00Z"}
            ],
        },
    )
    r = rig(tools=("a", "b"), script=[partial] * 10, timeout=1.0)
    with pytest.raises(HookError) as caught:
        r.hook.run()
    assert caught.value.code == 4
    assert "issued nothing for ['b']" in str(caught.value)


def test_clock_skew_with_the_broker_is_corrected() -> None:
    """Our clock 10 min ahead of the broker's: the credential is not taken as expired on arrival."""
    r = rig(sidecar=True, ttl=100)
    r.broker.behind = 600
    r.waiter.until = lambda: r.broker.issued >= 2
    with structlog.testing.capture_logs() as logs:
        r.hook.run()
    assert r.waiter.waits[0] == pytest.approx(50.0, abs=1.0)
    assert r.output.writes == [{"crm": "tok-1-crm"}, {"crm": "tok-2-crm"}]
    assert any(e["event"].startswith("our clock differs") for e in logs)
