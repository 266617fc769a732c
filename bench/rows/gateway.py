"""The gateway row: what the gateway adds over calling the upstream directly.

The upstream is the bare endpoint (bench/bare.py: aiohttp over the same TLS, its own
process). Both paths use the same Python generator with the agent's X.509-SVID (the
gateway credential is bound to it by `cnf`), in the same run:

- open loop at 500 req/s offered: p50/p99 direct and through the gateway; the added
  latency is the difference (targets: p50 <= 1 ms, p99 <= 2 ms);
- closed loop (saturation): throughput through the gateway / direct (target >= 0.5x);
  also with the audit to /dev/null, and with `broker serve --workers 2` (no target);
- the proxy floor (bench/proxy_floor.py: aiohttp forwarding with the key swapped in, no
  checks, no audit), open loop and saturation: the least a gateway on this stack costs.

The gateway route reads its key from a file; it has no model allow-list (bodies stream)
and no budget, so each request costs one credential verification (cached), one
revocation read, two durable audit records and the forwarding itself.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.request
from typing import Any

from bench import procs
from bench.harness import Bench
from bench.model import Load, Result, Results, Target
from bench.registry import row
from bench.rows.common import ISSUE_BODY, JSON
from bench.targets import at_least

RATE = 500.0
ADDED_P50_MS = 1.0
ADDED_P99_MS = 2.0
BODY = json.dumps({"model": "bench", "messages": [{"role": "user", "content": "hi"}]})


def _credential(bench: Bench, broker_url: str) -> str:
    """A five-minute credential for analytics_api, over mTLS (so bound to the agent's cert)."""
    ctx = ssl.create_default_context(cafile=str(bench.domain.ca))
    ctx.load_cert_chain(*bench.domain.agent_cert("analytics"))
    request = urllib.request.Request(  # noqa: S310 - https to our own broker
        f"{broker_url}/v1/credentials", data=ISSUE_BODY.encode(), headers=JSON, method="POST"
    )
    with urllib.request.urlopen(request, context=ctx, timeout=10) as resp:  # noqa: S310
        token = json.loads(resp.read())["credentials"][0]["token"]
    assert isinstance(token, str)
    return token


def _wait_gateway(bench: Bench, url: str, token: str, timeout: float = 20.0) -> None:
    ctx = ssl.create_default_context(cafile=str(bench.domain.ca))
    ctx.load_cert_chain(*bench.domain.agent_cert("analytics"))
    deadline = time.monotonic() + timeout
    while True:
        request = urllib.request.Request(  # noqa: S310 - https to our own gateway
            url,
            data=BODY.encode(),
            headers={**JSON, "Authorization": f"Bearer {token}"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, context=ctx, timeout=5) as resp:  # noqa: S310
                if resp.status == 201:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)


def _added(result: Result, direct: Result, which: str, limit: float) -> Target:
    def judge(_results: Results) -> bool | None:
        ours, base = result.load, direct.load
        if ours is None or base is None:
            return None
        a, b = getattr(ours, f"{which}_ms"), getattr(base, f"{which}_ms")
        if a is None or b is None:
            return None
        return bool(a - b <= limit)

    return Target(f"added {which} <= {limit:g} ms", judge)


def _note(label: str, ours: Load | None, base: Load | None) -> str:
    if ours is None or base is None or ours.p50_ms is None or base.p50_ms is None:
        return f"{label}: n/a"
    return (
        f"{label}: added p50 {ours.p50_ms - base.p50_ms:+.2f} ms, "
        f"added p99 {(ours.p99_ms or 0) - (base.p99_ms or 0):+.2f} ms"
    )


def gateway_section(bench: Bench, upstream: str, port: int) -> dict[str, Any]:
    """The row's `gateway:` section: one route `bench` to `upstream`, key from a file."""
    key_file = bench.workdir / "gateway-upstream.key"
    key_file.write_text("bench-upstream-key\n")
    return {
        "host": "127.0.0.1",
        "port": port,
        "routes": {
            "bench": {
                "tool": "analytics_api",
                "upstream": upstream,
                "ca_file": str(bench.domain.ca),
                "key": {"source": "file", "file": str(key_file)},
                "methods": ["POST"],
                "path_prefixes": ["/v1/"],
            }
        },
    }


def ready_gateway(bench: Bench, broker_url: str, port: int) -> tuple[str, dict[str, str]]:
    """Wait until the gateway on `port` forwards; its URL and the agent's auth header."""
    token = _credential(bench, broker_url)
    via_url = f"https://127.0.0.1:{port}/bench/v1/chat/completions"
    _wait_gateway(bench, via_url, token)
    return via_url, {"Authorization": f"Bearer {token}"}


@row("gateway", "gateway vs direct upstream: added latency at 500 req/s, throughput ratio")
def gateway(bench: Bench) -> list[Result]:
    cert = bench.domain.agent_cert("analytics")
    with bench.bare() as (upstream, _):
        port = procs.free_port()  # free again between the two brokers of the row
        section = gateway_section(bench, upstream, port)
        with bench.broker("gateway", gateway=section) as broker:
            via_url, auth = ready_gateway(bench, broker.url, port)
            direct_url = f"{upstream}/v1/chat/completions"
            loads = {
                "direct-open": bench.clients(
                    direct_url, expected=201, body=BODY, cert=cert, mode="open", rate=RATE
                ),
                "via-open": bench.clients(
                    via_url,
                    expected=201,
                    body=BODY,
                    headers=auth,
                    cert=cert,
                    mode="open",
                    rate=RATE,
                ),
                "direct-sat": bench.clients(direct_url, expected=201, body=BODY, cert=cert),
                "via-sat": bench.clients(via_url, expected=201, body=BODY, headers=auth, cert=cert),
            }
        # The floor of any gateway on this stack: aiohttp forwarding, nothing else.
        floor_args = ("--upstream", upstream)
        with bench.module_server("proxy floor", "bench.proxy_floor", *floor_args) as (base, _):
            floor_url = f"{base}/bench/v1/chat/completions"
            loads["floor-open"] = bench.clients(
                floor_url, expected=201, body=BODY, cert=cert, mode="open", rate=RATE
            )
            loads["floor-sat"] = bench.clients(floor_url, expected=201, body=BODY, cert=cert)
        # The same gateway with its audit sent to /dev/null without fsync: what the two
        # durable records per request cost (compare with `audit-null` for issuance).
        with bench.broker("gateway-null", gateway=section, durable_audit=False) as broker:
            via_url, auth = ready_gateway(bench, broker.url, port)
            loads["via-null"] = bench.clients(
                via_url, expected=201, body=BODY, headers=auth, cert=cert
            )
        # `broker serve --workers 2`: every worker binds the gateway's port (SO_REUSEPORT).
        if bench.has_workers:
            with bench.broker("gateway-workers", gateway=section, workers=2) as broker:
                via_url, auth = ready_gateway(bench, broker.url, port)
                loads["via-workers"] = bench.clients(
                    via_url, expected=201, body=BODY, headers=auth, cert=cert
                )
    direct_open = Result(
        "gateway-direct-open",
        f"upstream direct, open loop {RATE:g}/s",
        load=loads["direct-open"],
        bare_key="gateway-direct",
    )
    via_open = Result(
        "gateway-open",
        f"through the gateway, open loop {RATE:g}/s",
        load=loads["via-open"],
        bare_key="gateway-direct",
        notes=[_note("gateway at 500/s", loads["via-open"], loads["direct-open"])],
    )
    via_open.targets += [
        _added(via_open, direct_open, "p50", ADDED_P50_MS),
        _added(via_open, direct_open, "p99", ADDED_P99_MS),
    ]
    direct_sat = Result("gateway-direct", "upstream direct, saturation", load=loads["direct-sat"])
    via_sat = Result(
        "gateway-sat",
        "through the gateway, saturation",
        load=loads["via-sat"],
        bare_key="gateway-direct",
        targets=[at_least("gateway-sat", 0.5, "gateway-direct", ">= 0.5x direct")],
    )
    floor_notes = [
        "aiohttp server + client, both TLS legs, the key swapped in; no checks, no audit"
    ]
    floor_open = Result(
        "gateway-floor-open",
        f"proxy floor (forwarding only), open loop {RATE:g}/s",
        load=loads["floor-open"],
        bare_key="gateway-direct",
        notes=[
            *floor_notes,
            _note("proxy floor at 500/s", loads["floor-open"], loads["direct-open"]),
        ],
    )
    floor_sat = Result(
        "gateway-floor-sat",
        "proxy floor (forwarding only), saturation",
        load=loads["floor-sat"],
        bare_key="gateway-direct",
        notes=floor_notes,
    )
    via_null = Result(
        "gateway-null-audit",
        "through the gateway, audit to /dev/null, saturation",
        load=loads["via-null"],
        bare_key="gateway-direct",
    )
    via_workers = Result(
        "gateway-workers",
        "through the gateway, --workers 2, saturation",
        load=loads.get("via-workers"),
        bare_key="gateway-direct",
        skipped=None if "via-workers" in loads else "n/a (no --workers)",
    )
    return [
        direct_open,
        via_open,
        floor_open,
        direct_sat,
        via_sat,
        floor_sat,
        via_null,
        via_workers,
    ]
