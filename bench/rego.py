"""Cost of one decision by the embedded Rego engine against the rule engine, same policy.

The development policy in both languages (`policy.yaml`, `policy.rego`), the same
request (the claims agent, a user, two tools): the rule engine is the baseline. The
Rego figure includes building the input document, `set_input`, the compiled bundle's
entrypoint query, and reading the result (target: at most 100 us per decision).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.timing import per_call_us
from broker.clock import SystemClock
from broker.dev.rego_policy import policy_rego
from broker.dev.templates import policy_yaml
from broker.domain import AuthMethod, Caller, RequestContext, UserContext
from broker.policy.config import PolicySettings
from broker.policy.engine import PolicyEngine
from broker.policy.loader import load_policy
from broker.policy.rego import RegoPolicy

NOW = datetime.now(UTC)
TOOLS = {"customer_data_api": (), "ticketing_api": (), "analytics_api": ()}


def context() -> RequestContext:
    caller = Caller(
        "spiffe://example.org/agent/claims",
        "example.org",
        AuthMethod.X509_SVID,
        NOW + timedelta(hours=1),
    )
    user = UserContext("https://idp.example.org", "alice", NOW.timestamp() + 3600)
    return RequestContext(caller, user, ("customer_data_api", "ticketing_api"), 120, NOW, "r")


def costs(directory: Path, calls: int) -> tuple[float, float]:
    """(rule engine, Rego) microseconds per decision."""
    (directory / "policy.yaml").write_text(policy_yaml("example.org"))
    (directory / "policy.rego").write_text(policy_rego("example.org"))
    rules = PolicyEngine(load_policy(directory / "policy.yaml"), TOOLS)
    rego = RegoPolicy(
        PolicySettings(file=None, engine="rego", module=directory / "policy.rego"),
        tool_scopes=TOOLS,
        clock=SystemClock(),
    )
    ctx = context()
    loop = asyncio.new_event_loop()
    try:
        assert rules.decide(ctx, "d").allow
        assert loop.run_until_complete(rego.decide(ctx, "d")).allow
        batch = 100

        async def many() -> None:
            for _ in range(batch):
                await rego.decide(ctx, "d")

        rego_us = per_call_us(lambda: loop.run_until_complete(many()), calls=calls // batch)
        return per_call_us(lambda: rules.decide(ctx, "d"), calls=calls), rego_us / batch
    finally:
        loop.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.rego")
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        rules, rego = costs(Path(tmp), args.calls)
    print(f"policy decision, dev policy, 2 tools, median of 5 x {args.calls:,} calls")
    print(f"  rule engine    {rules:8.1f} us   (baseline)")
    print(f"  rego (regopy)  {rego:8.1f} us   ({rego / rules:.1f}x; target <= 100 us)")


if __name__ == "__main__":
    main()
