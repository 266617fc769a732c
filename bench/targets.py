"""Targets from the issue, as `Target`s judged over the run's results."""

from __future__ import annotations

from bench.model import Result, Results, Target

__all__ = ["NAMES", "at_least", "at_most_fraction_of", "at_most_value", "bind_p99", "ratio"]

NAMES = {
    "bare": "bare",
    "bare-py": "bare (same generator)",
    "openbao": "OpenBao",
    "issue-jwt": "issuance",
    "issue-mtls": "mTLS issuance",
    "audit-null": "issuance with audit to /dev/null",
}


def _rps(results: Results, key: str) -> float | None:
    result = results.get(key)
    if result is None or result.rps is None or result.rps <= 0:
        return None
    return result.rps


def ratio(results: Results, key: str, base: str) -> float | None:
    """results[key] throughput / results[base] throughput (None if either is missing)."""
    ours, theirs = _rps(results, key), _rps(results, base)
    if ours is None or theirs is None:
        return None
    return ours / theirs


def at_least(key: str, factor: float, base: str, text: str | None = None) -> Target:
    """Throughput of `key` >= factor x throughput of `base`."""

    def judge(results: Results) -> bool | None:
        value = ratio(results, key, base)
        return None if value is None else value >= factor

    return Target(text or f">= {factor:g}x {NAMES.get(base, base)}", judge)


def at_most_fraction_of(key: str, base: str, divisor: float) -> Target:
    """Throughput of `key` >= throughput of `base` / divisor (cost within `divisor`x)."""

    def judge(results: Results) -> bool | None:
        value = ratio(results, key, base)
        return None if value is None else value >= 1 / divisor

    return Target(f"cost <= {divisor:g}x {NAMES.get(base, base)}'s", judge)


def bind_p99(result: Result, ms: float) -> Target:
    """p99 of this result's load at most `ms`."""

    def judge(_results: Results) -> bool | None:
        if result.load is None or result.load.p99_ms is None:
            return None
        return result.load.p99_ms <= ms

    return Target(f"p99 <= {ms:g} ms", judge)


def at_most_value(result: Result, limit: float) -> Target:
    """This result's `value` at most `limit` (its unit)."""

    def judge(_results: Results) -> bool | None:
        return None if result.value is None else result.value <= limit

    return Target(f"<= {limit:g} {result.unit}", judge)
