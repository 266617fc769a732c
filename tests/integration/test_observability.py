"""Observability: per-step latency histograms, process metrics, counters, tracing."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from broker.clock import SystemClock
from broker.dev.trust_domain import init_trust_domain
from tests.support import leaks
from tests.support.broker import BrokerProcess, free_port
from tests.support.devbroker import Agent, DevBroker, dev_broker

ANALYTICS = {"tools": ["analytics_api"]}
STAGES = ("authn", "context", "policy", "limits", "issue", "persist", "audit")


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[DevBroker]:
    """The development trust domain, served in-process over real TLS."""
    async with dev_broker(tmp_path / "dev") as running:
        yield running


def samples(exposition: str) -> dict[str, float]:
    out = {}
    for line in exposition.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


async def test_metrics_time_every_step_and_report_the_process(broker: DevBroker) -> None:
    """One issuance: every step has a latency sample; process metrics; counters are counters."""
    assert (await broker.agent("analytics").credentials(ANALYTICS)).status == 201
    text = (await broker.agent(None).request("GET", "/metrics")).body
    values = samples(text)
    for stage in STAGES:
        assert values[f'broker_stage_duration_seconds_count{{stage="{stage}"}}'] >= 1, stage
    assert values["process_resident_memory_bytes"] > 0
    assert "# TYPE broker_audit_batches_total counter" in text
    assert values["broker_audit_batches_total"] >= 1
    assert "# TYPE broker_state_batches_total counter" in text


async def test_a_trace_spans_the_request_its_steps_logs_and_audit_record(tmp_path: Path) -> None:
    """With tracing on, the caller's trace id is on the spans, the log line and the audit record."""
    td, _ = init_trust_domain(tmp_path / "dev", None, SystemClock())
    leaks.watch_audit(td.root)
    port = free_port()
    config = yaml.safe_load(td.config.read_text())
    config["listen"]["port"] = port
    config["log_level"] = "debug"
    config["tracing"] = {"exporter": "console", "service_name": "broker-under-test"}
    td.config.write_text(yaml.safe_dump(config))
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    url = f"https://127.0.0.1:{port}"
    process = BrokerProcess(["serve", "--config", str(td.config)], cwd=tmp_path).start()
    try:
        process.wait_ready(url, td.ca_bundle)
        response = await Agent(td, url, "analytics").credentials(
            ANALYTICS, headers={"traceparent": f"00-{trace_id}-{parent}-01"}
        )
        assert response.status == 201
    finally:
        assert process.stop() == 0

    spans = [json.loads(line) for line in process.stdout.splitlines() if line.startswith("{")]
    ours = [s for s in spans if s["context"]["trace_id"] == f"0x{trace_id}"]
    names = {s["name"] for s in ours}
    assert "POST /v1/credentials" in names
    assert set(STAGES) <= names
    server = next(s for s in ours if s["name"] == "POST /v1/credentials")
    assert server["parent_id"] == f"0x{parent}"  # continues the caller's span
    assert server["resource"]["attributes"]["service.name"] == "broker-under-test"

    records = [json.loads(line) for line in (td.root / "audit.log").read_text().splitlines()]
    issued = [r for r in records if r["event"] == "credential.issued"]
    assert [r["trace_id"] for r in issued] == [trace_id]
    logged = [json.loads(line) for line in process.stderr.splitlines() if line.startswith("{")]
    assert any(e.get("trace_id") == trace_id and e["event"] == "request" for e in logged)


def test_an_unknown_span_exporter_is_a_configuration_error(tmp_path: Path) -> None:
    """A bad tracing section is refused at start-up, naming the key."""
    td, _ = init_trust_domain(tmp_path / "dev", None, SystemClock())
    config = yaml.safe_load(td.config.read_text())
    config["tracing"] = {"exporter": "zipkin"}
    td.config.write_text(yaml.safe_dump(config))
    from broker.config.settings import load_settings
    from broker.errors import ConfigError

    with pytest.raises(ConfigError, match=r"tracing\.exporter"):
        load_settings(td.config)
