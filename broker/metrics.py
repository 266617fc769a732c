"""Prometheus metrics (`GET /metrics`).

Counters are incremented where things happen (requests, decisions, issued credentials);
gauges describing state (readiness, SVID expiry, breaker, policy version, audit health)
are read from the running broker at scrape time by a collector, so the modules that own
that state need no metrics plumbing. Each application has its own registry.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

from broker.domain import Credential, Decision

__all__ = ["CONTENT_TYPE", "Metrics"]

M = TypeVar("M", bound=MetricWrapperBase)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Stages take microseconds to milliseconds (a Vault call: up to its timeout).
_STAGE_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.1,
    0.5,
    2.5,
)
STAGES = ("authn", "context", "policy", "limits", "issue", "persist", "audit", "vault")


class _StateCollector(Collector):
    def __init__(self, read: Callable[[], dict[str, Any]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Any]:
        state = self._read()
        ready = GaugeMetricFamily(
            "broker_ready", "Whether each dependency is ready", labels=["check"]
        )
        for check, ok in state.get("checks", {}).items():
            ready.add_metric([check], 1.0 if ok else 0.0)
        yield ready
        if "svid_expiry" in state:
            yield GaugeMetricFamily(
                "broker_svid_expiry_timestamp_seconds",
                "When the broker's own X.509-SVID expires",
                value=state["svid_expiry"],
            )
        policy = InfoMetricFamily("broker_policy", "The running policy")
        policy.add_metric(
            [], {"id": state.get("policy_id", ""), "version": state.get("policy_version", "")}
        )
        yield policy
        for name, (documentation, value) in state.get("gauges", {}).items():
            yield GaugeMetricFamily(name, documentation, value=value)
        for name, (documentation, value) in state.get("counters", {}).items():
            yield CounterMetricFamily(name, documentation, value=value)


class _Series:
    """One label set of a `_Histogram`: a bucket index by bisection, two additions."""

    __slots__ = ("_bounds", "_lock", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self._lock = threading.Lock()  # Vault calls observe from hvac's threads
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        index = bisect.bisect_left(self._bounds, seconds)
        with self._lock:
            self.counts[index] += 1
            self.total += seconds


class _Histogram(Collector):
    """A Prometheus histogram observed on the hot path for about a microsecond.

    `prometheus_client.Histogram.observe` walks the buckets in Python and takes a lock per
    value it increments (several microseconds); a request observes eight. This keeps
    plain per-bucket counts per label set and renders the same exposition (`_bucket`,
    `_count`, `_sum`) at scrape time.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: tuple[str, ...],
        buckets: tuple[float, ...],
        registry: CollectorRegistry,
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = labelnames
        self._bounds = tuple(sorted(buckets))
        self._series: dict[tuple[str, ...], _Series] = {}
        registry.register(self)

    def labels(self, *values: str) -> _Series:
        """The series of one label set (created on first use)."""
        series = self._series.get(values)
        if series is None:
            series = self._series.setdefault(values, _Series(self._bounds))
        return series

    def describe(self) -> Iterator[Any]:
        yield HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)

    def collect(self) -> Iterator[Any]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)
        for values, series in list(self._series.items()):
            counts, total = list(series.counts), series.total
            cumulative, buckets = 0, []
            for bound, count in zip((*self._bounds, math.inf), counts, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == math.inf else repr(bound), float(cumulative)))
            family.add_metric(list(values), buckets, total)
        yield family


class Metrics:
    """The broker's metrics, in a registry of their own."""

    def __init__(self) -> None:
        """Create the metrics."""
        self.registry = CollectorRegistry(auto_describe=True)
        # Label values are bounded: routes, methods, statuses, reasons, tools are finite.
        self._children: dict[tuple[int, tuple[str, ...]], MetricWrapperBase] = {}
        self.requests = Counter(
            "broker_http_requests",
            "HTTP requests",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = _Histogram(
            "broker_http_request_duration_seconds",
            "HTTP request latency",
            ("route",),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.decisions = Counter(
            "broker_decisions",
            "Policy decisions (deny reasons counted separately)",
            ["decision", "reason"],
            registry=self.registry,
        )
        self.shadow_denials = Counter(
            "broker_shadow_denials",
            "Requests a shadow rule (shadow: true) would have denied, per rule (not enforced)",
            ["rule"],
            registry=self.registry,
        )
        self.credentials = Counter(
            "broker_credentials_issued",
            "Credentials issued",
            ["tool", "type"],
            registry=self.registry,
        )
        self.stages = _Histogram(
            "broker_stage_duration_seconds",
            "Time spent in each step of a request (authn, context, policy, limits, issue, "
            "persist, audit) and in each Vault call",
            ("stage",),
            buckets=_STAGE_BUCKETS,
            registry=self.registry,
        )
        self.auth_failures_aggregated = Counter(
            "broker_auth_failures_aggregated",
            "Failed authentications whose identity did not parse (audited in aggregate)",
            registry=self.registry,
        )
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    def watch(self, read: Callable[[], dict[str, Any]]) -> None:
        """Expose state read at scrape time (readiness, SVID expiry, policy, breaker)."""
        self.registry.register(_StateCollector(read))

    def _child(self, metric: M, *labels: str) -> M:
        """A labelled child, looked up once (`labels()` costs microseconds per call)."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return cast("M", child)

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one HTTP request."""
        self._child(self.requests, route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def decision(self, decision: Decision) -> None:
        """Count a decision (each denial reason once)."""
        if decision.allow:
            self._child(self.decisions, "allow", "").inc()
        for reason in decision.reasons:
            self._child(self.decisions, "deny", reason).inc()

    def shadowed(self, decision: Decision) -> None:
        """Count each shadow rule that would have denied this decision (once per decision)."""
        for rule in dict.fromkeys(d.rule_id for d in decision.would_deny):
            self._child(self.shadow_denials, rule).inc()

    def issued(self, credentials: list[Credential]) -> None:
        """Count issued credentials."""
        for credential in credentials:
            self._child(self.credentials, credential.tool, credential.type).inc()

    def stage(self, stage: str, seconds: float) -> None:
        """Observe one step's duration."""
        self.stages.labels(stage).observe(seconds)

    def exposition(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
