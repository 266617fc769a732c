"""Cost of one policy decision at 10 and at 10,000 agents, and of one JWT mint.

Baselines from the same run: the 10-agent decision for the 10,000-agent one (the index
must make them equal), and a bare `jwt.encode` of the same claims with the same key for
the broker's mint (the difference is the broker's own work). With the `rego` extra, the
Rego engine's decision of the development policy too (`bench.rego`): a first evaluation
and a repeated input (its remembered result).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import tempfile
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import jwt
import yaml

from bench.timing import per_call_us
from broker.clock import SystemClock
from broker.config.settings import ToolSettings
from broker.domain import AuthMethod, Caller, RequestContext, UserContext
from broker.issuers.base import IssueRequest
from broker.issuers.jwt import JwtIssuer, KeyRing
from broker.issuers.jwt.config import JwtIssuerSettings
from broker.logging import configure_logging
from broker.policy.engine import PolicyEngine
from broker.policy.loader import load_policy

NOW = datetime.now(UTC)


def engine_with(agents: int, directory: Path) -> PolicyEngine:
    rules = [
        {
            "id": f"agent-{i}",
            "agents": [f"spiffe://example.org/agent/a{i}"],
            "tools": ["crm", "mail"],
            "user": {"required": True, "tiers": ["gold", "silver"]},
            "max_ttl_seconds": 300,
            "rate_limits": [{"per": ["user"], "limit": 60, "window_seconds": 60}],
        }
        for i in range(agents)
    ]
    rules.append({"id": "team", "agents": ["spiffe://example.org/agent/*"], "tools": ["wiki"]})
    rules.append(
        {
            "id": "no-free",
            "effect": "deny",
            "agents": ["spiffe://example.org/*"],
            "tools": ["*"],
            "user": {"tiers": ["free"]},
        }
    )
    path = directory / f"policy-{agents}.yaml"
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml: seconds faster at 10k
    path.write_text(yaml.dump({"id": "bench", "version": 1, "rules": rules}, Dumper=dumper))
    return PolicyEngine(load_policy(path), {"crm": ("crm:read",), "mail": ("mail:send",)})


def context(agent: str) -> RequestContext:
    caller = Caller(
        agent, "example.org", AuthMethod.X509_SVID, NOW + timedelta(hours=1), x509_sha256="ab" * 32
    )
    user = UserContext("https://idp.example.org", "alice", NOW.timestamp() + 3600, tier="gold")
    return RequestContext(caller, user, ("crm", "mail"), 120, NOW, "req")


def decisions(directory: Path, scale: float = 1.0) -> dict[int, float]:
    """Per-decision cost; the sizes are interleaved and each keeps its best median."""
    engines: dict[int, tuple[PolicyEngine, RequestContext]] = {}
    for agents in (10, 10_000):
        engine = engine_with(agents, directory)
        ctx = context(f"spiffe://example.org/agent/a{agents // 2}")
        assert engine.decide(ctx, "d").allow
        engines[agents] = (engine, ctx)
    best: dict[int, float] = {}
    for _ in range(2):
        for agents, (engine, ctx) in engines.items():
            cost = per_call_us(partial(engine.decide, ctx, "d"), calls=int(20_000 * scale))
            best[agents] = min(cost, best.get(agents, cost))
    return best


def mint(directory: Path, scale: float = 1.0) -> tuple[float, float]:
    clock = SystemClock()
    keys = KeyRing(
        JwtIssuerSettings(issuer="https://broker.bench", keys_file=directory / "keys.json"), clock
    )
    keys.load()
    issuer = JwtIssuer("https://broker.bench", keys, clock)
    engine = engine_with(10, directory)
    ctx = context("spiffe://example.org/agent/a5")
    decision = engine.decide(ctx, "d")
    tool = ToolSettings("crm", "jwt", audience="https://crm.example.org", scopes=("crm:read",))
    request = IssueRequest(ctx, decision, decision.tools[0], tool, decision.ttl_granted)
    key = keys.signing_key()
    claims = issuer.claims(request, jti="x" * 24, now=int(clock.time()))
    headers = {"kid": key.kid, "typ": "at+jwt"}

    def bare() -> object:
        return jwt.encode(claims, key.private_key, algorithm=key.alg, headers=headers)

    loop = asyncio.new_event_loop()
    batch = 100

    async def mints() -> None:
        for _ in range(batch):
            await issuer.issue(request)

    def broker_mints() -> object:  # a batch per loop run: the harness's loop costs nothing
        return loop.run_until_complete(mints())

    try:
        return (
            per_call_us(bare, calls=int(5_000 * scale)),
            per_call_us(broker_mints, calls=max(5, int(50 * scale))) / batch,
        )
    finally:
        loop.close()


def rego(directory: Path, scale: float = 1.0) -> tuple[float, float] | None:
    """(first evaluation, repeated input) of a Rego decision; None without regopy."""
    if importlib.util.find_spec("regopy") is None:
        return None
    from bench.rego import memo_costs  # noqa: PLC0415 - it needs regopy, an optional extra

    # An evaluation costs ~50x a remembered decision: a tenth of the calls is as steady.
    return memo_costs(directory, max(100, int(2_000 * scale)), int(20_000 * scale))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.decision")
    parser.add_argument("--quick", action="store_true", help="a tenth of the calls")
    parser.add_argument("--scale", type=float, help="fraction of the calls (default 1)")
    args = parser.parse_args(argv)
    scale = args.scale or (0.1 if args.quick else 1.0)
    configure_logging("warning")  # the policy's "loaded" lines are not results
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        cost = decisions(directory, scale)
        bare, ours = mint(directory, scale)
        rego_costs = rego(directory, scale)
    print(
        "policy decision (2 tools, user conditions, limits), best of 2 medians of 5 x "
        f"{int(20_000 * scale):,} calls"
    )
    print(f"  {'10 agents':<21} {cost[10]:8.1f} us   (baseline)")
    print(
        f"  {'10,000 agents':<21} {cost[10_000]:8.1f} us   "
        f"({cost[10_000] / cost[10]:.2f}x the baseline)"
    )
    if rego_costs is None:
        print("  Rego first evaluation n/a: regopy not installed")
        print("  Rego repeated input   n/a: regopy not installed")
    else:
        first, repeated = rego_costs
        print(
            f"  {'Rego first evaluation':<21} {first:8.1f} us   (the dev policy, a new input "
            f"each time; median of 5 x {max(100, int(2_000 * scale)):,} calls)"
        )
        print(
            f"  {'Rego repeated input':<21} {repeated:8.1f} us   (the same input: its "
            "remembered result; target <= 100 us)"
        )
    print(f"JWT mint (ES256 by default), median of 5 x {int(5_000 * scale):,} calls")
    print(f"  jwt.encode     {bare:8.1f} us   (baseline: the library alone)")
    print(f"  broker mint    {ours:8.1f} us   (+{ours - bare:.1f} us: claims, jti, credential)")


if __name__ == "__main__":
    main()
