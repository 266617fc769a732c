"""Cost of one decision by the embedded Rego engine against the rule engine, same policy.

The development policy in both languages (`policy.yaml`; the Rego bundle `policy.rego` +
`data.json`), the same request (the claims agent, a user, two tools): the rule engine is
the baseline. The Rego figure includes building the input document, setting it, the
compiled bundle's entrypoint query, and reading the result into a `Decision` (target: at
most 100 us per decision). Nothing is cached between decisions. The floor is what any
Rego policy costs here: the same input document set, then an entrypoint that returns a
constant (`decision := true`).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.timing import per_call_us
from broker.clock import SystemClock
from broker.dev.rego_policy import policy_data_json, policy_rego
from broker.dev.templates import policy_yaml
from broker.domain import AuthMethod, Caller, RequestContext, UserContext
from broker.policy.config import PolicySettings
from broker.policy.engine import PolicyEngine
from broker.policy.loader import load_policy
from broker.policy.rego import RegoPolicy, input_document
from broker.policy.rego_cpp import Interpreter, build

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


def floor_us(ctx: RequestContext, calls: int) -> float:
    """Microseconds to set the input document and query a constant entrypoint."""
    bundle = build({"floor.rego": "package floor\ndecision := true\n"}, None, ["floor/decision"])
    interpreter = Interpreter()

    def once() -> None:
        interpreter.set_input(input_document(ctx))
        interpreter.query(bundle, b"floor/decision")

    return per_call_us(once, calls=calls)


def costs(directory: Path, calls: int) -> tuple[float, float, float]:
    """(rule engine, Rego, Rego floor) microseconds per decision."""
    (directory / "policy.yaml").write_text(policy_yaml("example.org"))
    bundle = directory / "rego"
    bundle.mkdir()
    (bundle / "policy.rego").write_text(policy_rego())
    (bundle / "data.json").write_text(policy_data_json("example.org"))
    rules = PolicyEngine(load_policy(directory / "policy.yaml"), TOOLS)
    rego = RegoPolicy(
        PolicySettings(file=None, engine="rego", bundle=bundle),
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
        rules_us = per_call_us(lambda: rules.decide(ctx, "d"), calls=calls)
        return rules_us, rego_us / batch, floor_us(ctx, calls)
    finally:
        loop.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.rego")
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        rules, rego, floor = costs(Path(tmp), args.calls)
    print(f"policy decision, dev policy, 2 tools, median of 5 x {args.calls:,} calls")
    print(f"  rule engine    {rules:8.1f} us   (baseline)")
    print(f"  rego (regopy)  {rego:8.1f} us   ({rego / rules:.1f}x; target <= 100 us)")
    print(f"  rego floor     {floor:8.1f} us   (input document + a constant entrypoint)")


if __name__ == "__main__":
    main()
