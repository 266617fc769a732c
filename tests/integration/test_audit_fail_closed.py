"""Fail closed: no credential without its audit record; readiness follows the audit sink."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from broker.audit.chain import verify_files
from broker.clock import SystemClock
from broker.config.settings import load_settings
from broker.dev.trust_domain import init_trust_domain
from tests.support.broker import eventually
from tests.support.devbroker import dev_broker


async def test_unwritable_audit_sink_yields_503_and_no_credential(tmp_path: Path) -> None:
    """Disk full: 503 problem+json, no token in the body, readyz false; then recovery."""
    root = tmp_path / "dev"
    td, _ = init_trust_domain(root, None, SystemClock())
    audit_path = root / "audit.log"
    audit_path.symlink_to("/dev/full")
    audit = dataclasses.replace(load_settings(td.config).audit, path=audit_path)
    async with dev_broker(root, audit=audit) as broker:
        agent = broker.agent("analytics")
        anonymous = broker.agent(None)

        refused = await agent.credentials({"tools": ["analytics_api"]})
        assert refused.status == 503
        assert refused.content_type == "application/problem+json"
        assert "Retry-After" in refused.headers
        assert "credentials" not in refused.body
        assert "eyJ" not in json.dumps(refused.body)

        ready = await anonymous.request("GET", "/readyz")
        assert ready.status == 503
        assert ready.body["checks"]["audit"] is False
        # Denials are refused too: they must be recorded before they are answered.
        denied = await broker.agent("claims").credentials({"tools": ["analytics_api"]})
        assert denied.status == 503

        # What was minted for the refused request is marked revoked, never handed out.
        records = await broker.running.runtime.state.agent_credentials(
            "spiffe://example.org/agent/analytics"
        )
        assert all(r.revoked for r in records)

        audit_path.unlink()
        audit_path.write_bytes(b"")  # space again

        async def recovered() -> bool:
            return (await anonymous.request("GET", "/readyz")).status == 200

        await eventually(recovered, within=5)
        issued = await agent.credentials({"tools": ["analytics_api"]})
        assert issued.status == 201
    events = [json.loads(line)["event"] for line in audit_path.read_text().splitlines()]
    assert events[0] == "audit.sink_recovered"
    assert "credential.issued" in events
    assert verify_files([audit_path]).ok
