"""Row 8: open-loop latency at a fixed offered rate, on the mTLS and the JWT-SVID paths.

Requests leave on a schedule (`--rate` per second in all, spread over the generator
processes), not when the previous answer came back, and each latency runs from the
request's scheduled send time: a server that falls behind shows its queueing in the
percentiles instead of slowing the generator down (no coordinated omission).
"""

from __future__ import annotations

from bench.harness import Bench
from bench.model import Check, Load, Result
from bench.registry import row
from bench.rows.common import ISSUE_BODY, bearer
from bench.targets import bind_p99

P99_TARGET_MS = 10.0
# The achieved rate may fall short of the offered one by this much before it is flagged.
RATE_TOLERANCE = 0.98


def _achieved(load: Load) -> Check:
    offered = load.offered or 0.0
    achieved = load.rps
    return Check(
        "rate",
        ok=achieved >= RATE_TOLERANCE * offered and not load.unexpected,
        detail=(
            f"achieved {achieved:.0f}/s of {offered:g}/s offered; of the window's "
            f"{sum(load.statuses.values()) + load.errors.get('unanswered', 0):,} scheduled "
            f"requests, {load.ok:,} answered {load.expected}"
            + (f", scheduler lag up to {load.late_max_ms:.1f} ms" if load.late_max_ms else "")
        ),
    )


def _scheduled(bench: Bench, url: str, *, mtls: bool) -> Load:
    """The open-loop schedule (`--rate`) of issuances against `url`, over mTLS or a bearer."""
    cert = bench.domain.agent_cert("analytics") if mtls else None
    headers = None if mtls else bearer(bench.domain.jwt_svid("analytics"))
    return bench.clients(
        f"{url}/v1/credentials",
        expected=201,
        body=ISSUE_BODY,
        headers=headers,
        cert=cert,
        mode="open",
        rate=bench.options.rate,
    )


def _open_loop(
    bench: Bench, key: str, label: str, *, mtls: bool, workers: int | None = None
) -> list[Result]:
    with bench.broker(key, workers=workers) as broker:
        load = _scheduled(bench, broker.url, mtls=mtls)
        audit = bench.audit_check(broker, issued=load.seen_status(201))
    rate = bench.options.rate
    result = Result(
        key, f"{label}, open loop {rate:g}/s offered", load=load, checks=[_achieved(load), audit]
    )
    result.targets.append(bind_p99(result, P99_TARGET_MS))
    return [result]


@row("open-mtls", "open-loop latency at a fixed rate, mTLS")
def open_mtls(bench: Bench) -> list[Result]:
    return _open_loop(bench, "open-mtls", "issuance mTLS", mtls=True)


@row("open-jwt", "open-loop latency at a fixed rate, JWT-SVID bearer")
def open_jwt(bench: Bench) -> list[Result]:
    return _open_loop(bench, "open-jwt", "issuance JWT-SVID", mtls=False)


@row("open-floor", "open-loop latency at a fixed rate, the issuance's floor (bench/floor.py)")
def open_floor(bench: Bench) -> list[Result]:
    """The same schedule against the floor of the design: the least latency it allows here."""
    with bench.floor() as (url, _):
        load = _scheduled(bench, url, mtls=False)
    rate = bench.options.rate
    label = f"issuance floor (essential work only), JWT-SVID, open loop {rate:g}/s offered"
    return [Result("open-floor", label, load=load, checks=[_achieved(load)])]


# The deployment a two-core node runs (the chart's `workers: auto`): the same schedule,
# against `broker serve --workers 2`. The single-process rows above stay the baseline.


@row("open-w2-mtls", "open-loop latency at a fixed rate, mTLS, --workers 2")
def open_w2_mtls(bench: Bench) -> list[Result]:
    return _open_loop(bench, "open-w2-mtls", "issuance mTLS, --workers 2", mtls=True, workers=2)


@row("open-w2-jwt", "open-loop latency at a fixed rate, JWT-SVID bearer, --workers 2")
def open_w2_jwt(bench: Bench) -> list[Result]:
    return _open_loop(bench, "open-w2-jwt", "issuance JWT-SVID, --workers 2", mtls=False, workers=2)
