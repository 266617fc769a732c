"""Cost of one decision by the embedded Rego engine against the rule engine, same policy.

The development policy in both languages (`policy.yaml`; the Rego bundle `policy.rego` +
`data.json`), the same request (the claims agent, a user, two tools): the rule engine is
the baseline. The Rego figures include building the input document (or the key), setting
it, the compiled bundle's entrypoint query, and reading the result into a `Decision`
(target: at most 100 us per decision), twice: a first evaluation (each request a new
input: the user's subject differs, and there are more of them than the memo keeps, so
every one is evaluated) and a repeated input (the same request again: the remembered
result, read for this request). The floor is what any evaluation costs here: the same
input document set, then an entrypoint that returns a constant (`decision := true`).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.timing import per_call_us
from broker.clock import SystemClock
from broker.dev.rego_policy import policy_data_json, policy_rego
from broker.dev.templates import policy_yaml
from broker.domain import AuthMethod, Caller, RequestContext, UserContext
from broker.logging import configure_logging
from broker.policy.config import PolicySettings
from broker.policy.engine import PolicyEngine
from broker.policy.loader import load_policy
from broker.policy.rego import RegoPolicy, input_document
from broker.policy.rego_cpp import Interpreter, build
from broker.policy.rego_decisions import MEMO_ENTRIES

NOW = datetime.now(UTC)
TOOLS = {"customer_data_api": (), "ticketing_api": (), "analytics_api": ()}


def context(subject: str = "alice") -> RequestContext:
    caller = Caller(
        "spiffe://example.org/agent/claims",
        "example.org",
        AuthMethod.X509_SVID,
        NOW + timedelta(hours=1),
    )
    user = UserContext("https://idp.example.org", subject, NOW.timestamp() + 3600)
    return RequestContext(caller, user, ("customer_data_api", "ticketing_api"), 120, NOW, "r")


def floor_us(ctx: RequestContext, calls: int) -> float:
    """Microseconds to set the input document and query a constant entrypoint."""
    bundle = build({"floor.rego": "package floor\ndecision := true\n"}, None, ["floor/decision"])
    interpreter = Interpreter()

    def once() -> None:
        interpreter.set_input(input_document(ctx))
        interpreter.query(bundle, b"floor/decision")

    return per_call_us(once, calls=calls)


def dev_rego(directory: Path) -> RegoPolicy:
    """The development policy as a Rego bundle written under `directory`."""
    bundle = directory / "rego"
    bundle.mkdir()
    (bundle / "policy.rego").write_text(policy_rego())
    (bundle / "data.json").write_text(policy_data_json("example.org"))
    return RegoPolicy(
        PolicySettings(file=None, engine="rego", bundle=bundle),
        tool_scopes=TOOLS,
        clock=SystemClock(),
    )


def rego_us(rego: RegoPolicy, contexts: Sequence[RequestContext], calls: int) -> float:
    """Microseconds per decision, taking the contexts in turn (100 per event-loop run)."""
    batch = 100
    turn = itertools.cycle(contexts)
    loop = asyncio.new_event_loop()

    async def many() -> None:
        for _ in range(batch):
            await rego.decide(next(turn), "d")

    try:
        runs = max(1, calls // batch)
        return per_call_us(lambda: loop.run_until_complete(many()), calls=runs) / batch
    finally:
        loop.close()


def memo_costs(directory: Path, first_calls: int, repeated_calls: int) -> tuple[float, float]:
    """(first evaluation, repeated input) microseconds per Rego decision of the dev policy."""
    rego = dev_rego(directory)
    # More distinct inputs than the memo keeps, taken in turn: each is gone when it returns.
    distinct = [context(f"user-{i}") for i in range(MEMO_ENTRIES + 1_000)]
    assert rego.program.reads is not None  # the memo is on
    assert asyncio.run(rego.decide(context(), "d")).allow
    return rego_us(rego, distinct, first_calls), rego_us(rego, [context()], repeated_calls)


def costs(directory: Path, calls: int) -> tuple[float, float, float, float]:
    """(rule engine, Rego first evaluation, Rego repeated input, floor) microseconds."""
    (directory / "policy.yaml").write_text(policy_yaml("example.org"))
    rules = PolicyEngine(load_policy(directory / "policy.yaml"), TOOLS)
    ctx = context()
    assert rules.decide(ctx, "d").allow
    first, repeated = memo_costs(directory, calls, calls)
    rules_us = per_call_us(lambda: rules.decide(ctx, "d"), calls=calls)
    return rules_us, first, repeated, floor_us(ctx, calls)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.rego")
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args(argv)
    configure_logging("warning")  # the policy's "loaded" lines are not results
    with tempfile.TemporaryDirectory() as tmp:
        rules, first, repeated, floor = costs(Path(tmp), args.calls)
    print(f"policy decision, dev policy, 2 tools, median of 5 x {args.calls:,} calls")
    print(f"  rule engine          {rules:8.1f} us   (baseline)")
    print(
        f"  rego first eval      {first:8.1f} us   ({first / rules:.1f}x; distinct inputs: "
        "each one evaluated)"
    )
    print(
        f"  rego repeated input  {repeated:8.1f} us   ({repeated / rules:.1f}x; the remembered "
        "result; target <= 100 us)"
    )
    print(f"  rego floor           {floor:8.1f} us   (input document + a constant entrypoint)")


if __name__ == "__main__":
    main()
