"""Rows 3 to 7 and the audit comparison: the broker under saturating closed-loop load."""

from __future__ import annotations

import importlib.util
from typing import Any

from bench.harness import Bench
from bench.model import Check, Load, Result
from bench.registry import row
from bench.rows.common import DENIED_BODY, ISSUE_BODY, bearer, exchange_body
from bench.targets import at_least, at_most_fraction_of

# Generator ceiling: the Python generator must reach this multiple of the broker's mTLS
# figure against the bare endpoint, or the mTLS figure measures the generator.
GENERATOR_HEADROOM = 2.0


def _issuance(bench: Bench, key: str, **options: Any) -> tuple[Load, Check, str]:
    """wrk's JWT-SVID issuance against a broker started with `options`: load, audit, RSS."""
    token = bench.domain.jwt_svid("analytics")
    with bench.broker(key, **options) as broker:
        load = bench.wrk(
            f"{broker.url}/v1/credentials", body=ISSUE_BODY, headers=bearer(token), expected=201
        )
        check = bench.audit_check(broker, issued=load.seen_status(201))
        rss = bench.rss_note(broker)
    return load, check, rss


@row("issue-jwt", "broker POST /v1/credentials, JWT-SVID bearer (wrk)")
def issue_jwt(bench: Bench) -> list[Result]:
    load, check, rss = _issuance(bench, "issue-jwt")
    return [
        Result(
            "issue-jwt",
            "broker issuance, JWT-SVID bearer",
            load=load,
            checks=[check],
            targets=[at_least("issue-jwt", 0.3, "bare"), at_least("issue-jwt", 1.2, "openbao")],
            notes=[rss],
        )
    ]


@row("floor", "the design's floor: an issuance's essential work alone (bench/floor.py)")
def floor(bench: Bench) -> list[Result]:
    """Issue #10's own limit prototype, in the same run: what the broker is measured against."""
    token = bench.domain.jwt_svid("analytics")
    with bench.floor() as (url, _):
        load = bench.wrk(
            f"{url}/v1/credentials", body=ISSUE_BODY, headers=bearer(token), expected=201
        )
    notes = [
        (
            "cached JWT-SVID check, dict policy, ES256, chained audit line + SQLite row in "
            "one fsynced group commit; none of the broker's other per-request work"
        )
    ]
    broker = bench.results.get("issue-jwt")
    if broker is not None and broker.rps and load.rps:
        share = broker.rps / load.rps
        notes.append(f"the broker's JWT-SVID issuance ran at {share:.2f}x this floor")
    return [Result("floor", "issuance floor (essential work only)", load=load, notes=notes)]


@row("issue-jwt-uvloop", "the issuance row on uvloop instead of the standard asyncio loop")
def issue_jwt_uvloop(bench: Bench) -> list[Result]:
    """What uvloop (an option: BROKER_EVENT_LOOP=uvloop) is worth: the same row on it."""
    label = "broker issuance, JWT-SVID bearer, uvloop"
    if importlib.util.find_spec("uvloop") is None:
        return [Result("issue-jwt-uvloop", label, skipped="n/a (uvloop not installed)")]
    load, check, _ = _issuance(bench, "issue-jwt-uvloop", env={"BROKER_EVENT_LOOP": "uvloop"})
    return [
        Result(
            "issue-jwt-uvloop",
            label,
            load=load,
            checks=[check],
            notes=["BROKER_EVENT_LOOP=uvloop: libuv's loop and its TLS transport"],
        )
    ]


@row("issue-mtls", "broker POST /v1/credentials over mTLS (Python clients)")
def issue_mtls(bench: Bench) -> list[Result]:
    cert = bench.domain.agent_cert("analytics")
    with bench.bare() as (url, _):
        ceiling = bench.clients(f"{url}/v1/credentials", expected=201, body=ISSUE_BODY, cert=cert)
    with bench.broker("issue-mtls") as broker:
        load = bench.clients(
            f"{broker.url}/v1/credentials", expected=201, body=ISSUE_BODY, cert=cert
        )
        check = bench.audit_check(broker, issued=load.seen_status(201))
        rss = bench.rss_note(broker)
    headroom = ceiling.rps / load.rps if load.rps else float("inf")
    generator = Result(
        "bare-py",
        "bare, same Python mTLS generator (its ceiling)",
        load=ceiling,
        checks=[
            Check(
                "generator",
                ok=headroom >= GENERATOR_HEADROOM,
                detail=(
                    f"drives bare at {headroom:.1f}x the broker's mTLS rate "
                    f"(needs >= {GENERATOR_HEADROOM:g}x, else it is the bottleneck)"
                ),
            )
        ],
    )
    return [
        generator,
        Result(
            "issue-mtls",
            "broker issuance, mTLS (X.509-SVID)",
            load=load,
            bare_key="bare-py",
            checks=[check],
            targets=[
                at_least("issue-mtls", 0.3, "bare-py"),
                at_least("issue-mtls", 1.2, "openbao"),
            ],
            notes=[rss, "x bare compares with bare driven by the same Python generator"],
        ),
    ]


@row("token-exchange", "broker POST /v1/token (RFC 8693) as claims (wrk)")
def token_exchange(bench: Bench) -> list[Result]:
    token = bench.domain.jwt_svid("claims")
    user = bench.domain.user_token("alice")
    headers = {**bearer(token), "Content-Type": "application/x-www-form-urlencoded"}
    with bench.broker("token-exchange") as broker:
        load = bench.wrk(
            f"{broker.url}/v1/token", body=exchange_body(user), headers=headers, expected=200
        )
        check = bench.audit_check(broker, issued=load.seen_status(200))
    return [
        Result(
            "token-exchange",
            "token exchange /v1/token, JWT-SVID",
            load=load,
            checks=[check],
            targets=[at_most_fraction_of("token-exchange", "issue-jwt", 1.5)],
            notes=["bench policy: claims' 60/user/min limit raised (still checked)"],
        )
    ]


@row("denial", "broker 403: analytics asks for customer_data_api (wrk)")
def denial(bench: Bench) -> list[Result]:
    token = bench.domain.jwt_svid("analytics")
    with bench.broker("denial") as broker:
        load = bench.wrk(
            f"{broker.url}/v1/credentials", body=DENIED_BODY, headers=bearer(token), expected=403
        )
        check = bench.audit_check(broker, denied=load.seen_status(403))
    return [
        Result(
            "denial",
            "denial (403), JWT-SVID",
            load=load,
            checks=[check],
            targets=[at_most_fraction_of("denial", "issue-jwt", 1.5)],
        )
    ]


@row("workers", "broker serve --workers 2, issuance, JWT-SVID bearer (wrk)")
def workers(bench: Bench) -> list[Result]:
    label = "broker --workers 2 issuance, JWT-SVID"
    targets = [at_least("workers", 1.5, "openbao")]
    if not bench.has_workers:
        return [Result("workers", label, skipped="n/a (no --workers)", targets=targets)]
    load, check, _ = _issuance(bench, "workers", workers=2)
    return [Result("workers", label, load=load, checks=[check], targets=targets)]


@row("audit-null", "broker issuance with the audit to /dev/null, no fsync (wrk)")
def audit_null(bench: Bench) -> list[Result]:
    token = bench.domain.jwt_svid("analytics")
    with bench.broker("audit-null", durable_audit=False) as broker:
        load = bench.wrk(
            f"{broker.url}/v1/credentials", body=ISSUE_BODY, headers=bearer(token), expected=201
        )
    return [
        Result(
            "audit-null",
            "issuance, audit to /dev/null (no fsync)",
            load=load,
            targets=[at_least("issue-jwt", 0.8, "audit-null", "durable audit costs <= 20%")],
            notes=["compare with the durable issuance row (same generator)"],
        )
    ]
