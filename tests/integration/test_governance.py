"""Governance (CONTRACT section 8) against the served dev broker: registry, admin view, versions."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import secrets
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.clock import SystemClock
from broker.config.settings import StateSettings
from broker.dev.trust_domain import init_trust_domain
from broker.policy.config import PolicySettings
from broker.state.redis.config import RedisSettings
from tests.support.devbroker import Agent, DevBroker, Response, dev_broker
from tests.support.servers import RedisServer


def unwatched(directory: Path) -> PolicySettings:
    """The dev policy, with its file watcher out of the way (tests reload explicitly)."""
    return PolicySettings(file=directory / "policy.yaml", watch_seconds=3600)


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[DevBroker]:
    """The development trust domain, served in-process."""
    async with dev_broker(tmp_path / "dev", policy=unwatched(tmp_path / "dev")) as running:
        yield running


def run_broker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_an_undeclared_tool_is_refused_with_tool_not_declared(broker: DevBroker) -> None:
    """A rule widened to every tool still cannot give `analytics` a tool it does not declare."""
    policy = yaml.safe_load(broker.td.policy.read_text())
    policy["rules"][1]["tools"] = ["*"]
    policy["agents"][1]["declared_tools"] = ["analytics_api"]
    broker.td.policy.write_text(yaml.safe_dump(policy))
    assert await broker.running.runtime.policy.reload_async()
    response = await broker.agent("analytics").credentials({"tools": ["ticketing_api"]})
    assert response.status == 403
    assert response.body["reasons"] == ["tool_not_declared"]
    assert (await broker.agent("analytics").credentials({"tools": ["analytics_api"]})).status == 201


async def test_admin_lists_agents_with_live_credentials(broker: DevBroker) -> None:
    """GET /v1/admin/agents: registry fields, live credential count, last issuance; admins only."""
    body = {"tools": ["customer_data_api", "ticketing_api"], "user_token": broker.user_token()}
    assert (await broker.agent("claims").credentials(body)).status == 201
    forbidden = await broker.agent("claims").request("GET", "/v1/admin/agents")
    assert forbidden.status == 403
    listing = await broker.agent("admin").request("GET", "/v1/admin/agents")
    assert listing.status == 200
    agents = {a["spiffe_id"]: a for a in listing.body["agents"]}
    claims = agents["spiffe://example.org/agent/claims"]
    assert claims["registered"]
    assert claims["owner"] == {"team": "claims", "contact": "claims-team@example.org"}
    assert claims["declared_tools"] is None
    assert claims["environment"] == "development"
    assert claims["live_credentials"] == 2
    assert claims["last_issued_at"].endswith("Z")
    analytics = agents["spiffe://example.org/agent/analytics"]
    assert analytics["live_credentials"] == 0
    assert analytics["last_issued_at"] is None


async def test_each_policy_version_is_kept_and_its_loading_audited(broker: DevBroker) -> None:
    """Start and reload write `policy.loaded` (id, version, hash) and keep the content 0600."""
    first = broker.td.policy.read_bytes()
    policy = yaml.safe_load(first)
    policy["version"] = 2
    broker.td.policy.write_text(yaml.safe_dump(policy))
    assert await broker.running.runtime.policy.reload_async()
    loaded = [r for r in broker.audit_records() if r["event"] == "policy.loaded"]
    assert [r["policy"]["version"].split("+")[0] for r in loaded] == ["1", "2"]
    for record, raw in zip(loaded, [first, broker.td.policy.read_bytes()], strict=True):
        digest = hashlib.sha256(raw).hexdigest()
        assert record["target"]["hash"] == f"sha256:{digest}"
        kept = broker.td.root / "policies" / record["target"]["archived"]
        assert kept.name == f"sha256-{digest}.yaml"
        assert kept.read_bytes() == raw
        assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    verify = run_broker("audit", "verify", "--no-head", str(broker.td.root / "audit.log"))
    assert verify.returncode == 0, verify.stdout


async def test_agents_list_and_show_read_the_policy_and_the_state_store(
    broker: DevBroker,
) -> None:
    """`broker agents list/show` print the registry and live credentials from the store."""
    assert (await broker.agent("analytics").credentials({"tools": ["analytics_api"]})).status == 201
    config = str(broker.td.config)
    listing = run_broker("agents", "list", "--config", config, "--json")
    assert listing.returncode == 0, listing.stderr
    agents = {a["spiffe_id"]: a for a in json.loads(listing.stdout)["agents"]}
    assert agents["spiffe://example.org/agent/analytics"]["live_credentials"] == 1
    table = run_broker("agents", "list", "--config", config)
    assert "spiffe://example.org/agent/analytics" in table.stdout
    assert " data " in table.stdout
    show = run_broker("agents", "show", "spiffe://example.org/agent/analytics", "--config", config)
    assert show.returncode == 0, show.stderr
    shown = json.loads(show.stdout)
    assert shown["live_credentials"] == 1
    assert shown["rules"] == ["analytics-batch"]
    bad = run_broker("agents", "show", "not-an-id", "--config", config)
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr


async def test_a_shadow_rule_allows_audits_would_deny_and_counts(broker: DevBroker) -> None:
    """`shadow: true` deny rule: 201, `would_deny` with reasons in the record, metric per rule."""
    policy = yaml.safe_load(broker.td.policy.read_text())
    policy["rules"].append(
        {
            "id": "no-batch-at-all",
            "effect": "deny",
            "shadow": True,
            "agents": ["spiffe://example.org/agent/analytics"],
            "tools": ["*"],
        }
    )
    broker.td.policy.write_text(yaml.safe_dump(policy))
    assert await broker.running.runtime.policy.reload_async()
    for _ in range(2):
        response = await broker.agent("analytics").credentials({"tools": ["analytics_api"]})
        assert response.status == 201
    issued = [r for r in broker.audit_records() if r["event"] == "credential.issued"]
    assert issued[-1]["would_deny"] == {
        "reasons": ["denied_by_rule"],
        "rules": ["no-batch-at-all"],
        "tools": ["analytics_api"],
    }
    metrics = (await broker.agent(None).request("GET", "/metrics")).body
    assert 'broker_shadow_denials_total{rule="no-batch-at-all"} 2.0' in metrics


def rego_bundle(directory: Path) -> PolicySettings:
    """The dev policy in Rego (`rego/`: module and data document), unwatched."""
    return PolicySettings(file=None, engine="rego", bundle=directory / "rego", watch_seconds=3600)


async def test_the_broker_serves_the_dev_policy_in_rego(tmp_path: Path) -> None:
    """`policy: {engine: rego, bundle: rego}`: same answers; the version kept as one JSON."""
    settings = rego_bundle(tmp_path / "dev")
    async with dev_broker(tmp_path / "dev", policy=settings) as broker:
        ok = await broker.agent("analytics").credentials({"tools": ["analytics_api"]})
        assert ok.status == 201
        no = await broker.agent("analytics").credentials({"tools": ["customer_data_api"]})
        assert no.status == 403
        assert no.body["reasons"] == ["tool_not_allowed"]
        body = {"tools": ["customer_data_api"], "user_token": broker.user_token()}
        assert (await broker.agent("claims").credentials(body)).status == 201
        records = broker.audit_records()
    (loaded,) = [r for r in records if r["event"] == "policy.loaded"]
    assert loaded["policy"]["id"] == "dev"
    kept = tmp_path / "dev" / "policies" / loaded["target"]["archived"]
    assert kept.suffix == ".json"
    version = json.loads(kept.read_bytes())
    bundle = tmp_path / "dev" / "rego"
    assert version["modules"] == {"policy.rego": (bundle / "policy.rego").read_text()}
    assert version["data"] == json.loads((bundle / "data.json").read_text())
    issued = [r for r in records if r["event"] == "credential.issued"]
    assert issued[-1]["rules"] == ["claims-on-behalf-of-user"]


async def test_the_rego_registry_is_the_data_documents_agents(tmp_path: Path) -> None:
    """With Rego: agents in data.json are listed (API, CLI) and undeclared tools refused."""
    directory = tmp_path / "dev"
    async with dev_broker(directory, policy=rego_bundle(directory)) as broker:
        data_file = directory / "rego" / "data.json"
        data = json.loads(data_file.read_text())
        data["grants"]["analytics-batch"]["tools"] = ["analytics_api", "ticketing_api"]
        data["agents"][1]["declared_tools"] = ["analytics_api"]
        data_file.write_text(json.dumps(data))
        assert await broker.running.runtime.policy.reload_async()
        refused = await broker.agent("analytics").credentials({"tools": ["ticketing_api"]})
        assert refused.status == 403
        assert refused.body["reasons"] == ["tool_not_declared"]
        ok = await broker.agent("analytics").credentials({"tools": ["analytics_api"]})
        assert ok.status == 201
        listing = await broker.agent("admin").request("GET", "/v1/admin/agents")
        assert listing.status == 200
    served = {a["spiffe_id"]: a for a in listing.body["agents"]}
    analytics = served["spiffe://example.org/agent/analytics"]
    assert analytics["owner"] == {"team": "data", "contact": "data-team@example.org"}
    assert analytics["declared_tools"] == ["analytics_api"]
    assert analytics["live_credentials"] == 1
    config = yaml.safe_load(broker.td.config.read_text())
    config["policy"] = {"engine": "rego", "bundle": "rego"}
    rego_config = directory / "config-rego.yaml"
    rego_config.write_text(yaml.safe_dump(config))
    result = run_broker("agents", "list", "--config", str(rego_config), "--json")
    assert result.returncode == 0, result.stderr
    listed = {a["spiffe_id"]: a for a in json.loads(result.stdout)["agents"]}
    assert listed["spiffe://example.org/agent/claims"]["owner"]["team"] == "claims"
    assert listed["spiffe://example.org/agent/analytics"]["live_credentials"] == 1


async def test_explain_replays_an_earlier_rego_bundle(tmp_path: Path) -> None:
    """`broker audit explain` compiles the kept bundle in force then, not the current one."""
    from tests.support.clock import ManualClock

    clock = ManualClock()
    directory = tmp_path / "dev"
    async with dev_broker(directory, clock=clock, policy=rego_bundle(directory)) as broker:
        clock.advance(60)
        before = clock.now()
        assert (
            await broker.agent("analytics").credentials({"tools": ["analytics_api"]})
        ).status == 201
        clock.advance(60)
        data_file = directory / "rego" / "data.json"
        data = json.loads(data_file.read_text())
        del data["grants_by_agent"]["spiffe://example.org/agent/analytics"]
        data_file.write_text(json.dumps(data))
        assert await broker.running.runtime.policy.reload_async()
        clock.advance(60)
        after = clock.now()
        denied = await broker.agent("analytics").credentials({"tools": ["analytics_api"]})
        assert denied.status == 403
    from broker.governance.explain import Question, explain

    agent = "spiffe://example.org/agent/analytics"

    def ask(at: datetime) -> dict[str, Any]:
        question = Question(at=at, agent=agent, tool="analytics_api")
        return explain([directory / "audit.log"], directory / "policies", question)

    then, now = ask(before), ask(after)
    assert then["answers"][0]["decision"] == "allow"
    assert then["answers"][0]["rules"] == ["analytics-batch"]
    assert now["answers"][0]["decision"] == "deny"
    assert now["answers"][0]["reasons"] == ["agent_unknown"]
    assert then["policy"]["hash"] != now["policy"]["hash"]


async def test_explain_reproduces_an_earlier_policy_after_it_changed(tmp_path: Path) -> None:
    """`broker audit explain --at T1` answers with the version in force at T1, not today's."""
    from datetime import timedelta

    from tests.support.clock import ManualClock

    clock = ManualClock()
    directory = tmp_path / "dev"
    async with dev_broker(directory, clock=clock, policy=unwatched(directory)) as broker:
        clock.advance(60)
        before = clock.now()
        assert (
            await broker.agent("analytics").credentials({"tools": ["analytics_api"]})
        ).status == 201
        clock.advance(60)
        policy = yaml.safe_load(broker.td.policy.read_text())
        policy["version"] = 2
        policy["rules"] = [r for r in policy["rules"] if r["id"] != "analytics-batch"]
        broker.td.policy.write_text(yaml.safe_dump(policy))
        assert await broker.running.runtime.policy.reload_async()
        clock.advance(60)
        after = clock.now()
        denied = await broker.agent("analytics").credentials({"tools": ["analytics_api"]})
        assert denied.status == 403
        log = str(broker.td.root / "audit.log")
    agent = "spiffe://example.org/agent/analytics"

    def ask(at: str, *extra: str) -> dict[str, Any]:
        result = run_broker("audit", "explain", log, "--at", at, "--agent", agent, *extra)
        assert result.returncode == 0, result.stdout + result.stderr
        return json.loads(result.stdout)  # type: ignore[no-any-return]

    then = ask(before.isoformat(), "--tool", "analytics_api")
    (answer,) = then["answers"]
    assert answer["decision"] == "allow"
    assert answer["rules"] == ["analytics-batch"]
    assert then["policy"]["version"].startswith("1+sha256:")
    assert [a["decision"] for a in then["activity"]] == ["allow", "deny"]
    now = ask(after.isoformat())
    assert now["policy"]["version"].startswith("2+sha256:")
    assert now["answers"] == []  # version 2 names no tool for analytics
    now = ask(after.isoformat(), "--tool", "analytics_api")
    assert now["answers"][0]["reasons"] == ["agent_unknown"]
    claims = run_broker(
        "audit",
        "explain",
        log,
        "--at",
        (before - timedelta(days=1)).isoformat(),
        "--agent",
        agent,
    )
    assert claims.returncode == 2
    assert "no policy.loaded record" in claims.stderr


async def test_export_writes_valid_ocsf_events_after_verifying_the_chain(
    broker: DevBroker, tmp_path: Path
) -> None:
    """Each record becomes an OCSF event with its class's required fields; a bad chain: none."""
    from tests.support.ocsf_schema import problems

    assert (await broker.agent("analytics").credentials({"tools": ["analytics_api"]})).status == 201
    denied = await broker.agent("analytics").credentials({"tools": ["customer_data_api"]})
    assert denied.status == 403
    unverified = await broker.agent("claims").request(
        "POST",
        "/v1/credentials",
        json_body={"tools": ["x"]},
        headers={"Authorization": "Bearer a.b.c"},
    )
    assert unverified.status in {400, 401}
    log = broker.td.root / "audit.log"
    out = tmp_path / "events.jsonl"
    result = run_broker("audit", "export", "--format", "ocsf", str(log), "-o", str(out))
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(events) == len(broker.audit_records())
    for event in events:
        assert problems(event) == [], event
    by_message = {e["message"]: e for e in events}
    issued = by_message["credential.issued"]
    assert (issued["class_uid"], issued["activity_id"], issued["status_id"]) == (6003, 1, 1)
    assert issued["actor"]["user"]["uid"] == "spiffe://example.org/agent/analytics"
    assert by_message["credential.denied"]["status_detail"] == "tool_not_allowed"
    assert by_message["policy.loaded"]["class_uid"] == 6003
    failed = by_message["auth.failed"]
    assert (failed["class_uid"], failed["activity_id"], failed["status_id"]) == (3002, 1, 2)
    assert failed["user"]["uid"] == "spiffe://example.org/agent/claims"
    lines = log.read_text().splitlines()
    lines[1] = lines[1].replace('"event":', '"event" :', 1)
    log.write_text("\n".join(lines) + "\n")
    broken = run_broker("audit", "export", "--format", "ocsf", str(log))
    assert broken.returncode == 1
    assert broken.stdout == ""
    assert "FAILED" in broken.stderr


async def test_human_approval_flow(tmp_path: Path) -> None:
    """require_approval: 202 pending; admin approves once; the agent collects 201 once, then 410."""
    from tests.support.clock import ManualClock

    clock = ManualClock()
    directory = tmp_path / "dev"
    async with dev_broker(directory, clock=clock, policy=unwatched(directory)) as broker:
        policy = yaml.safe_load(broker.td.policy.read_text())
        policy["rules"][1]["require_approval"] = True
        broker.td.policy.write_text(yaml.safe_dump(policy))
        assert await broker.running.runtime.policy.reload_async()
        analytics, admin = broker.agent("analytics"), broker.agent("admin")

        async def ask() -> str:
            pending = await analytics.credentials({"tools": ["analytics_api"], "ttl_seconds": 60})
            assert pending.status == 202, pending.body
            assert pending.body["status"] == "pending"
            assert pending.body["decision_id"]
            return str(pending.body["approval_id"])

        first = await ask()
        assert (await analytics.request("GET", f"/v1/approvals/{first}")).status == 202
        approve = {"decision": "approve", "reason": "ticket 42"}
        path = f"/v1/admin/approvals/{first}"
        not_admin = await broker.agent("claims").request("POST", path, json_body=approve)
        assert not_admin.status == 403
        assert (await broker.agent("claims").request("GET", f"/v1/approvals/{first}")).status == 404
        granted = await admin.request("POST", path, json_body=approve)
        assert granted.status == 200
        assert granted.body["status"] == "approved"
        assert (await admin.request("POST", path, json_body=approve)).status == 409
        clock.advance(30)
        issued = await analytics.request("GET", f"/v1/approvals/{first}")
        assert issued.status == 201
        assert issued.body["expires_in"] == 60
        assert issued.body["credentials"][0]["tool"] == "analytics_api"
        assert (await analytics.request("GET", f"/v1/approvals/{first}")).status == 410

        second = await ask()
        deny = {"decision": "deny", "reason": "no"}
        assert (
            await admin.request("POST", f"/v1/admin/approvals/{second}", json_body=deny)
        ).status == 200
        denied = await analytics.request("GET", f"/v1/approvals/{second}")
        assert denied.status == 403
        assert denied.body["reasons"] == ["approval_denied"]

        third = await ask()
        clock.advance(901)
        assert (await analytics.request("GET", f"/v1/approvals/{third}")).status == 410
        records = broker.audit_records()
    events = [r["event"] for r in records if r["event"].startswith(("approval.", "credential."))]
    assert events == [
        "approval.requested",
        "approval.granted",
        "credential.issued",
        "approval.requested",
        "approval.denied",
        "approval.requested",
        "approval.expired",
    ]
    grant = next(r for r in records if r["event"] == "approval.granted")
    assert grant["agent"]["spiffe_id"] == "spiffe://example.org/admin"
    assert grant["target"]["reason"] == "ticket 42"
    issued_record = next(r for r in records if r["event"] == "credential.issued")
    assert issued_record["target"] == {"approval_id": first}


async def test_approvers_by_user_token_group_and_a_configured_expiry(tmp_path: Path) -> None:
    """A user in an approver group approves (not their own request); expiry_seconds applies."""
    from broker.governance.config import ApprovalSettings
    from tests.support.clock import ManualClock

    clock = ManualClock()
    directory = tmp_path / "dev"
    approvals = ApprovalSettings(expiry_seconds=60, approver_groups=frozenset({"approvers"}))
    async with dev_broker(
        directory, clock=clock, policy=unwatched(directory), approvals=approvals
    ) as broker:
        policy = yaml.safe_load(broker.td.policy.read_text())
        policy["rules"][0]["require_approval"] = True
        broker.td.policy.write_text(yaml.safe_dump(policy))
        assert await broker.running.runtime.policy.reload_async()
        claims, approver_app = broker.agent("claims"), broker.agent("analytics")
        alice = broker.user_token("alice", groups=("approvers",))
        body = {"tools": ["customer_data_api"], "user_token": alice}
        pending = await claims.credentials(body)
        assert pending.status == 202
        path = f"/v1/admin/approvals/{pending.body['approval_id']}"

        async def approve_as(token: str | None) -> int:
            request: dict[str, object] = {"decision": "approve"}
            if token is not None:
                request["user_token"] = token
            return (await approver_app.request("POST", path, json_body=request)).status

        assert await approve_as(None) == 403  # a workload alone is no approver
        assert await approve_as(broker.user_token("carol")) == 403  # in no approver group
        assert await approve_as(alice) == 403  # her own request
        assert await approve_as(broker.user_token("bob", groups=("approvers",))) == 200
        collected = await claims.request("GET", f"/v1/approvals/{pending.body['approval_id']}")
        assert collected.status == 201
        late = await claims.credentials(body)
        clock.advance(61)
        gone = await claims.request("GET", f"/v1/approvals/{late.body['approval_id']}")
        assert gone.status == 410
        records = broker.audit_records()
    grant = next(r for r in records if r["event"] == "approval.granted")
    assert grant["target"]["approver_user"]["sub"] == "bob"
    assert grant["agent"]["spiffe_id"] == "spiffe://example.org/agent/analytics"


async def test_a_pending_approval_is_announced_by_a_signed_webhook(tmp_path: Path) -> None:
    """The webhook body is a JWS (typ approval+jwt) that verifies with the broker's JWKS."""
    import asyncio
    import http.server
    import threading

    import jwt as pyjwt

    from broker.governance.config import ApprovalSettings

    received: list[tuple[str, bytes]] = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.headers["Content-Type"], body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    directory = tmp_path / "dev"
    approvals = ApprovalSettings(webhook_url=f"http://127.0.0.1:{server.server_port}/hook")
    try:
        async with dev_broker(
            directory, policy=unwatched(directory), approvals=approvals
        ) as broker:
            policy = yaml.safe_load(broker.td.policy.read_text())
            policy["rules"][1]["require_approval"] = True
            broker.td.policy.write_text(yaml.safe_dump(policy))
            assert await broker.running.runtime.policy.reload_async()
            pending = await broker.agent("analytics").credentials({"tools": ["analytics_api"]})
            assert pending.status == 202
            for _ in range(500):  # the webhook is sent in the background
                if received:
                    break
                await asyncio.sleep(0.01)
            jwks = (await broker.agent(None).request("GET", "/.well-known/jwks.json")).body
    finally:
        server.shutdown()
        thread.join()
    ((content_type, body),) = received
    assert content_type == "application/jwt"
    header = pyjwt.get_unverified_header(body)
    assert header["typ"] == "approval+jwt"
    key = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    claims = pyjwt.decode(
        body, pyjwt.PyJWK(key).key, algorithms=[header["alg"]], options={"verify_aud": False}
    )
    assert claims["approval_id"] == pending.body["approval_id"]
    assert claims["decision_id"] == pending.body["decision_id"]
    assert claims["agent"] == "spiffe://example.org/agent/analytics"
    assert claims["tools"] == ["analytics_api"]


async def test_a_replica_other_than_the_one_asked_serves_the_approval(
    tmp_path: Path, redis: RedisServer
) -> None:
    """Two brokers on one Redis: asked on A, approved and collected once on B; 410/403 on both."""
    from tests.support.clock import ManualClock

    clock = ManualClock()
    directory = tmp_path / "dev"
    td, _ = init_trust_domain(directory, None, SystemClock())
    policy = yaml.safe_load(td.policy.read_text())
    policy["rules"][1]["require_approval"] = True
    td.policy.write_text(yaml.safe_dump(policy))
    shared = {
        "clock": clock,
        "policy": unwatched(directory),
        "state": StateSettings(
            backend="redis",
            options=RedisSettings(url=redis.url, key_prefix=f"appr{secrets.token_hex(3)}:"),
        ),
    }
    async with dev_broker(directory, **shared) as a:
        audit_b = dataclasses.replace(
            a.settings.audit, path=directory / "audit-b.log", chain_id="b"
        )
        async with dev_broker(directory, audit=audit_b, **shared) as b:
            on_a, on_b = a.agent("analytics"), b.agent("analytics")

            async def ask() -> str:
                pending = await on_a.credentials({"tools": ["analytics_api"], "ttl_seconds": 60})
                assert pending.status == 202, pending.body
                return str(pending.body["approval_id"])

            async def decide(broker: DevBroker, approval_id: str, decision: str) -> int:
                path = f"/v1/admin/approvals/{approval_id}"
                body = {"decision": decision, "reason": "ticket 7"}
                return (await broker.agent("admin").request("POST", path, json_body=body)).status

            async def poll(agent: Agent, approval_id: str) -> Response:
                return await agent.request("GET", f"/v1/approvals/{approval_id}")

            first = await ask()
            assert (await poll(on_b, first)).status == 202
            assert await decide(b, first, "approve") == 200
            assert await decide(a, first, "approve") == 409  # A sees B's decision
            issued = await poll(on_b, first)
            assert issued.status == 201, issued.body
            assert issued.body["credentials"][0]["tool"] == "analytics_api"
            assert (await poll(on_b, first)).status == 410
            assert (await poll(on_a, first)).status == 410

            # Polled on both replicas at once: the credentials are served exactly once.
            second = await ask()
            assert await decide(a, second, "approve") == 200
            raced = await asyncio.gather(*(poll(agent, second) for agent in (on_a, on_b) * 3))
            assert sorted(r.status for r in raced) == [201, 410, 410, 410, 410, 410]

            third = await ask()
            assert await decide(b, third, "deny") == 200
            assert (await poll(on_a, third)).status == 403

            fourth = await ask()
            clock.advance(901)
            assert (await poll(on_b, fourth)).status == 410
            assert (await poll(on_a, fourth)).status == 410
            assert await decide(a, fourth, "approve") == 410
