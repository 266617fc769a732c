"""A state store that cannot be written during issuance: 503, audited, nothing left alive."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.devbroker import DevBroker, dev_broker
from tests.support.faults import refuse_credential_writes


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[DevBroker]:
    """The development trust domain, served in-process over real TLS."""
    async with dev_broker(tmp_path / "dev") as running:
        yield running


async def test_unwritable_state_store_is_503_audited_and_issues_nothing(broker: DevBroker) -> None:
    """SQLite refusing writes mid-run: 503 problem, `credential.failed`, no live credential."""
    analytics = broker.agent("analytics")
    assert (await analytics.credentials({"tools": ["analytics_api"]})).status == 201
    state = broker.running.runtime.state
    before = await state.agent_credentials("spiffe://example.org/agent/analytics")

    with refuse_credential_writes(state):
        response = await analytics.credentials({"tools": ["analytics_api"]})
        assert response.status == 503, response.body
        assert response.content_type == "application/problem+json"
        assert "state store" in response.body["detail"]
        assert "credentials" not in response.body

    record = broker.audit_records()[-1]
    assert record["event"] == "credential.failed"
    assert record["agent"]["spiffe_id"] == "spiffe://example.org/agent/analytics"
    after = await state.agent_credentials("spiffe://example.org/agent/analytics")
    assert [r.credential_id for r in after] == [r.credential_id for r in before]
    # The store recovers: the next request is issued again.
    assert (await analytics.credentials({"tools": ["analytics_api"]})).status == 201
