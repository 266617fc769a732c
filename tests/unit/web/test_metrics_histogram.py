"""The stage and latency histograms: the exposition Prometheus reads, bucket by bucket."""

from __future__ import annotations

import threading

from prometheus_client.parser import text_string_to_metric_families

from broker.metrics import Metrics


def samples(metrics: Metrics, name: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        if family.name == name:
            return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}
    raise AssertionError(f"{name} not exposed")


def test_observations_land_in_cumulative_buckets_with_count_and_sum() -> None:
    metrics = Metrics()
    for seconds in (0.00004, 0.00005, 0.0003, 7.0):  # 0.00005 is on a bound: le is inclusive
        metrics.stage("policy", seconds)
    metrics.stage("audit", 0.002)
    got = samples(metrics, "broker_stage_duration_seconds")
    bucket = "broker_stage_duration_seconds_bucket"
    assert got[(bucket, (("le", "5e-05"), ("stage", "policy")))] == 2
    assert got[(bucket, (("le", "0.0005"), ("stage", "policy")))] == 3
    assert got[(bucket, (("le", "2.5"), ("stage", "policy")))] == 3
    assert got[(bucket, (("le", "+Inf"), ("stage", "policy")))] == 4
    assert got[("broker_stage_duration_seconds_count", (("stage", "policy"),))] == 4
    assert abs(got[("broker_stage_duration_seconds_sum", (("stage", "policy"),))] - 7.00039) < 1e-9
    assert got[("broker_stage_duration_seconds_count", (("stage", "audit"),))] == 1


def test_request_latency_is_a_histogram_per_route() -> None:
    metrics = Metrics()
    metrics.request("/v1/credentials", "POST", 201, 0.004)
    metrics.request("/v1/credentials", "POST", 403, 0.0001)
    got = samples(metrics, "broker_http_request_duration_seconds")
    route = ("route", "/v1/credentials")
    assert got[("broker_http_request_duration_seconds_bucket", (("le", "0.001"), route))] == 1
    assert got[("broker_http_request_duration_seconds_bucket", (("le", "0.005"), route))] == 2
    assert got[("broker_http_request_duration_seconds_count", (route,))] == 2


def test_observations_from_threads_are_all_counted() -> None:
    """Vault calls observe from hvac's threads while the loop observes too."""
    metrics = Metrics()

    def observe() -> None:
        for _ in range(5000):
            metrics.stage("vault", 0.001)

    threads = [threading.Thread(target=observe) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    got = samples(metrics, "broker_stage_duration_seconds")
    assert got[("broker_stage_duration_seconds_count", (("stage", "vault"),))] == 20_000
