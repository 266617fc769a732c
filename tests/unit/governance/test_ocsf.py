"""OCSF mapping: classes, ids and required fields; the checker itself catches omissions."""

from __future__ import annotations

import pytest

from broker.governance.ocsf import to_ocsf
from tests.support.ocsf_schema import problems

DENIED = {
    "ts": "2026-11-21T10:05:00Z",
    "event": "credential.denied",
    "decision": "deny",
    "reasons": ["tool_not_allowed"],
    "agent": {"spiffe_id": "spiffe://example.org/agent/claims"},
    "tools": ["crm"],
    "remote": "127.0.0.1",
    "hash": "ab" * 32,
}


def test_a_denial_is_a_failed_api_activity_create() -> None:
    """credential.denied -> 6003, activity Create, status Failure, time in milliseconds."""
    event = to_ocsf(DENIED)
    assert problems(event) == []
    assert (event["class_uid"], event["type_uid"], event["status_id"]) == (6003, 600301, 2)
    assert event["time"] == 1_795_255_500_000


@pytest.mark.parametrize("field", ["user", "service"])
def test_the_checker_reports_a_missing_required_field(field: str) -> None:
    """An Authentication event without `user` (or without service/dst_endpoint) is invalid."""
    event = to_ocsf({**DENIED, "event": "auth.failed"})
    assert problems(event) == []
    del event[field]
    assert problems(event)
