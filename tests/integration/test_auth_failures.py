"""Failed authentications: each presented identity audited, garbage audited in aggregate."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from tests.support.devbroker import dev_broker


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def test_garbage_bearers_cost_one_audit_record_not_one_each(tmp_path: Path) -> None:
    """200 unparseable bearers: 401 each, one aggregate `auth.failed` record with the count."""
    async with dev_broker(tmp_path / "dev") as broker:
        anonymous = broker.agent(None)
        before = len(broker.audit_records())
        for i in range(200):
            response = await anonymous.request(
                "GET", "/v1/whoami", headers={"Authorization": f"Bearer garbage-{i}"}
            )
            assert response.status == 401
            assert response.content_type == "application/problem+json"
        during = broker.audit_records()[before:]
    after = broker.audit_records()[before:]
    # No record (no fsync) per request: only aggregates, one per 10 s interval at most.
    assert all("unparsed_identity" in r["reasons"] for r in during)
    assert len(during) < 20
    aggregate = [r for r in after if "unparsed_identity" in r.get("reasons", ())]
    assert {r["event"] for r in aggregate} == {"auth.failed"}
    assert sum(r["target"]["count"] for r in aggregate) == 200
    assert all(r["target"]["remotes"] == 1 for r in aggregate)


async def test_a_claimed_identity_is_still_audited_one_by_one(tmp_path: Path) -> None:
    """A JWT claiming a SPIFFE ID that does not verify: its own record, before the 401."""
    async with dev_broker(tmp_path / "dev") as broker:
        forged = ".".join(
            [
                _b64({"alg": "ES256", "typ": "JWT"}),
                _b64({"sub": "spiffe://example.org/agent/claims", "jti": "j1"}),
                "c2ln",
            ]
        )
        response = await broker.agent(None).request(
            "GET", "/v1/whoami", headers={"Authorization": f"Bearer {forged}"}
        )
        assert response.status == 401
        last = broker.audit_records()[-1]
        assert last["event"] == "auth.failed"
        assert last["agent"]["spiffe_id"] == "spiffe://example.org/agent/claims"
        assert last["agent"]["jwt_svid_jti"] == "j1"
