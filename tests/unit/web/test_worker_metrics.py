"""`--workers`: one worker's /metrics gathers every worker's samples over unix sockets."""

from __future__ import annotations

import os
import stat

from prometheus_client.parser import text_string_to_metric_families

from broker.metrics import Metrics
from broker.web.worker_metrics import WorkerMetrics, merge, socket_path


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


async def test_a_scrape_of_either_worker_counts_both() -> None:
    first, second = Metrics(), Metrics()
    first.stage("policy", 0.001)
    second.stage("policy", 0.002)
    second.stage("policy", 0.003)
    set_id = os.getpid()  # a set of this test's own (xdist workers share a parent)
    workers = [
        WorkerMetrics(first, 0, 2, supervisor=set_id),
        WorkerMetrics(second, 1, 2, supervisor=set_id),
    ]
    for worker in workers:
        await worker.start()
    try:
        path = socket_path(1, set_id)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        for worker in workers:
            got = samples(await worker.exposition())
            count = "broker_stage_duration_seconds_count"
            assert got[(count, (("stage", "policy"), ("worker", "0")))] == 1
            assert got[(count, (("stage", "policy"), ("worker", "1")))] == 2
            assert got[("broker_worker_up", (("worker", "0"),))] == 1
            assert got[("broker_worker_up", (("worker", "1"),))] == 1
        await workers[1].close()
        got = samples(await workers[0].exposition())
        assert got[("broker_worker_up", (("worker", "1"),))] == 0  # gone: left out, not awaited
        assert (
            "broker_stage_duration_seconds_count",
            (("stage", "policy"), ("worker", "1")),
        ) not in got
    finally:
        for worker in workers:
            await worker.close()


def test_merge_keeps_each_family_once_with_every_worker_sample() -> None:
    text = (
        "# HELP broker_x_total Things\n# TYPE broker_x_total counter\n"
        'broker_x_total{kind="a"} 2.0\n'
    )
    merged = merge({0: text, 1: text, 2: None}).decode()
    assert merged.count("# TYPE broker_x_total counter") == 1
    got = samples(merged.encode())
    assert got[("broker_x_total", (("kind", "a"), ("worker", "0")))] == 2
    assert got[("broker_x_total", (("kind", "a"), ("worker", "1")))] == 2
    assert got[("broker_worker_up", (("worker", "2"),))] == 0
