"""Row 9: the broker's resident memory with 10,000 agents in the policy and 100,000 live
credentials tracked.

The policy is the bench policy plus 10,000 generated agent rules in the same schema
(checked with `broker policy check` against the run's configuration). The credentials are
issued through the API by the Python mTLS generator, as fast as it goes; with 5-minute
TTLs they are all live when VmRSS is read from /proc/PID/status, provided the fill took
less than 5 minutes (checked).

To fill fast, a request asks for `--rss-batch` tools at once (default 16, the API's
maximum): the RSS configuration adds that many tools cloned from `analytics_api` and the
policy lets the analytics agent have them. Every credential is still minted, tracked and
audited one by one; `--rss-batch 1` fills with single-tool requests only (slower).
"""

from __future__ import annotations

import json
import math
import time

from bench import procs
from bench.domain import FILL_TOOL_PREFIX, bench_policy, big_policy
from bench.harness import Bench
from bench.model import Check, Result
from bench.registry import row
from bench.targets import at_most_value

RSS_TARGET_MB = 150.0
CREDENTIAL_TTL_S = 300
READY_TIMEOUT_S = 300.0


@row("rss", "broker RSS: 10,000 agents in the policy, 100,000 live credentials")
def rss(bench: Bench) -> list[Result]:
    opts = bench.options
    batch = max(1, min(16, opts.rss_batch))
    fill_tools = [f"{FILL_TOOL_PREFIX}{i:02d}" for i in range(batch)] if batch > 1 else []
    base = bench_policy(bench.domain, bench.workdir / "policy-base.yaml")
    policy = bench.workdir / "policy-10k.yaml"
    big_policy(
        base,
        policy,
        agents=opts.rss_agents,
        fill_tools=fill_tools,
        analytics_id=bench.domain.agent_id("analytics"),
    )
    tools = fill_tools or ["analytics_api"]
    requests = math.ceil(opts.rss_credentials / len(tools))
    started = time.monotonic()
    # `broker policy check` runs beside the broker's start-up: both parse the big file.
    check_log = bench.workdir / "policy-check.log"
    checker = procs.spawn(
        "broker policy check", [procs.tool("broker"), "policy", "check", str(policy)], log=check_log
    )
    with bench.broker(
        "rss", policy=policy, fill_tools=fill_tools, ready_timeout=READY_TIMEOUT_S
    ) as broker:
        load_s = time.monotonic() - started
        code = checker.popen.wait(timeout=READY_TIMEOUT_S)
        procs.stop(checker)
        checked = check_log.read_text().strip().splitlines()[-1:] or ["(no output)"]
        if code != 0:
            raise RuntimeError(f"broker policy check failed: {checked[0]}")
        idle = procs.read_rss_kib(broker.proc.pid)
        started = time.monotonic()
        started = time.monotonic()
        load = bench.clients(
            f"{broker.url}/v1/credentials",
            expected=201,
            body=json.dumps({"tools": tools}),
            cert=bench.domain.agent_cert("analytics"),
            seconds=CREDENTIAL_TTL_S * 2,
            requests=requests,
        )
        fill_s = time.monotonic() - started
        after = procs.read_rss_kib(broker.proc.pid)
        audit = bench.audit_check(broker, issued=load.seen_status(201))
    issued = load.seen_status(201) * len(tools)
    others = {k: v for k, v in load.seen.items() if k != "201"}
    result = Result(
        "rss",
        f"broker RSS, {opts.rss_agents:,} agents + {issued:,} live credentials",
        value=after["VmRSS"] / 1024,
        unit="MB",
        checks=[
            Check(
                "credentials",
                ok=issued >= opts.rss_credentials and not others,
                detail=f"{issued:,} issued (wanted {opts.rss_credentials:,})"
                + (f", other answers {others}" if others else ""),
            ),
            Check(
                "live",
                ok=fill_s < CREDENTIAL_TTL_S,
                detail=f"filled in {fill_s:.0f} s (< {CREDENTIAL_TTL_S} s TTL: all live)",
            ),
            audit,
        ],
        notes=[
            f"{checked[0]} (broker ready in {load_s:.0f} s)",
            (
                f"RSS idle with the 10k policy {idle['VmRSS'] / 1024:.0f} MB; after the fill "
                f"{after['VmRSS'] / 1024:.0f} MB, peak {after['VmHWM'] / 1024:.0f} MB"
            ),
            (
                f"fill: {requests:,} requests x {len(tools)} tools, "
                f"{issued / fill_s:.0f} credentials/s ({load.generator})"
            ),
        ],
    )
    result.targets.append(at_most_value(result, RSS_TARGET_MB))
    return [result]
