"""Prometheus metrics for /metrics.

Request counts and latency are this API process's own; queue depth (the broker's waiting
recover tasks), live workers, job durations and TTO steps are read from Redis at scrape time
(workers record them there), so every API replica reports the same job numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from service.jobs import HistogramData, JobStore

log = logging.getLogger(__name__)


class StoreCollector(Collector):
    """Job-level metrics from the shared store; `depth` counts the jobs waiting to run (the
    broker's queue: `service.queue.TaskQueue.depth`)."""

    def __init__(self, store: JobStore, depth: Callable[[], int]) -> None:
        self.store = store
        self.depth = depth

    def collect(self) -> Iterator[Metric]:
        try:
            depth = self.depth()
            workers = self.store.live_workers()
            stats = self.store.stats()
        except Exception:  # a scrape must not fail because Redis is down; /readyz says so
            log.warning("metrics: Redis unavailable", exc_info=True)
            return
        yield GaugeMetricFamily("metahmr_queue_depth", "jobs waiting to run", value=depth)
        yield GaugeMetricFamily(
            "metahmr_live_workers", "workers with a fresh heartbeat", value=workers
        )
        finished = CounterMetricFamily(
            "metahmr_jobs_finished", "jobs finished by a worker", labels=["status"]
        )
        for status, count in sorted(stats.finished.items()):
            finished.add_metric([status], count)
        yield finished
        if stats.duration_s is not None:
            yield _histogram(
                "metahmr_job_duration_seconds", "job run time in a worker", stats.duration_s
            )
        if stats.tto_steps is not None:
            yield _histogram("metahmr_tto_steps", "TTO steps run per person", stats.tto_steps)


def _histogram(name: str, doc: str, data: HistogramData) -> HistogramMetricFamily:
    buckets: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip((*data.bounds, float("inf")), data.counts, strict=True):
        running += count
        buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=data.total)


class ApiMetrics:
    """This process's request metrics in their own registry (one per app, so tests can
    build several apps)."""

    def __init__(self, store: JobStore, depth: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "metahmr_http_requests",
            "HTTP requests",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "metahmr_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            registry=self.registry,
        )
        self.registry.register(StoreCollector(store, depth))

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)
