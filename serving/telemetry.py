"""Prometheus metrics of the API, correct across several uvicorn worker processes.

With ``PROMETHEUS_MULTIPROC_DIR`` set (before ``prometheus_client`` is first imported, i.e. in
the environment of ``uvicorn --workers N``), every process writes its values to files in that
directory and `metrics_response_bytes` aggregates them: counters and histograms are summed;
the version and snapshot-time gauges keep the minimum over live processes (``livemin``), so the
served version is the one *every* worker has reached and the snapshot age is the worst worker's.
Empty the directory before the workers start; a supervisor that knows when a worker dies should
call ``prometheus_client.multiprocess.mark_process_dead(pid)``. Without the variable, the
default registry of this one process is exposed.

The catalogue (type, labels):

==============================================  =========  =========================
riverstream_http_requests_total                 counter    route, model, status
riverstream_http_request_duration_seconds       histogram  route, model
riverstream_model_version                       gauge      model          (livemin)
riverstream_model_snapshot_timestamp_seconds    gauge      model          (livemin)
riverstream_model_swaps_total                   counter    model
riverstream_snapshots_refused_total             counter    model, reason
riverstream_snapshot_load_seconds               histogram  model
riverstream_closed_loop_publish_failures_total  counter    reason
==============================================  =========  =========================

Labels must stay bounded: ``route`` is the route template (``/models/{name}/predict``), not the
raw path; ``model`` is a configured model name or ``"none"``; ``status`` is the numeric code;
``reason`` is a short code such as ``bad_signature`` or ``load_failed`` (for the closed loop's
publishes, `serving.feedback`: ``not_acknowledged``, ``outage``, ``busy``, ``no_kafka``).

**Per-request metrics are counted in plain Python and written in bulk** (`RequestRecorder`):
in multiprocess mode every ``inc`` or ``observe`` takes a lock, checks the pid and packs a
value into the mmapped file, ≈ 3 µs per request for a counter and a histogram (measured), more
than parsing the request. The API adds a request to in-memory tallies (≈ 0.3 µs) and writes
them every `FLUSH_SECONDS` from its event loop, before it renders ``/metrics`` and at shutdown,
so what a scrape sees is at most that old; the values and labels are the same.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
FLUSH_SECONDS = 1.0
HTTP_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
LOAD_BUCKETS = (1e-4, 1e-3, 1e-2, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServingMetrics:
    """Every API metric, registered on ``registry`` (the default one unless testing).

    >>> from prometheus_client import CollectorRegistry, generate_latest
    >>> m = ServingMetrics(CollectorRegistry())
    >>> m.observe_request("/models/{name}/predict", "lr", 200, 0.002)
    >>> b'riverstream_http_requests_total{model="lr",route="/models/{name}/predict",status="200"}' \\
    ...     in generate_latest(m.registry)
    True
    """

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        r = registry
        self.http_requests_total = Counter(
            "riverstream_http_requests", "HTTP requests answered.", ["route", "model", "status"],
            registry=r,
        )  # fmt: skip
        self.http_request_duration_seconds = Histogram(
            "riverstream_http_request_duration_seconds", "Time to answer an HTTP request.",
            ["route", "model"], buckets=HTTP_BUCKETS, registry=r,
        )  # fmt: skip
        self.model_version = Gauge(
            "riverstream_model_version", "Snapshot version served (min over live workers).",
            ["model"], multiprocess_mode="livemin", registry=r,
        )  # fmt: skip
        self.model_snapshot_timestamp_seconds = Gauge(
            "riverstream_model_snapshot_timestamp_seconds",
            "Unix time the served snapshot was written (min over live workers).",
            ["model"], multiprocess_mode="livemin", registry=r,
        )  # fmt: skip
        self.model_swaps_total = Counter(
            "riverstream_model_swaps", "Snapshots swapped in.", ["model"], registry=r
        )
        self.snapshots_refused_total = Counter(
            "riverstream_snapshots_refused", "Snapshots refused (bad signature, load error...).",
            ["model", "reason"], registry=r,
        )  # fmt: skip
        self.snapshot_load_seconds = Histogram(
            "riverstream_snapshot_load_seconds", "Time to fetch, verify and unpickle a snapshot.",
            ["model"], buckets=LOAD_BUCKETS, registry=r,
        )  # fmt: skip
        self.closed_loop_publish_failures_total = Counter(
            "riverstream_closed_loop_publish_failures",
            "Closed-loop requests (ingest, logged predicts) answered 503: their events were not "
            "acknowledged by Kafka.",
            ["reason"], registry=r,
        )  # fmt: skip

    def observe_request(self, route: str, model: str, status: int, seconds: float) -> None:
        self.http_requests_total.labels(route=route, model=model, status=str(status)).inc()
        self.http_request_duration_seconds.labels(route=route, model=model).observe(seconds)

    def snapshot_swapped(
        self, model: str, version: int, snapshot_timestamp: float, load_seconds: float
    ) -> None:
        """Record that ``version`` of ``model`` (written at ``snapshot_timestamp``) now serves."""
        self.snapshot_load_seconds.labels(model=model).observe(load_seconds)
        self.model_version.labels(model=model).set(version)
        self.model_snapshot_timestamp_seconds.labels(model=model).set(snapshot_timestamp)
        self.model_swaps_total.labels(model=model).inc()

    def snapshot_refused(self, model: str, reason: str) -> None:
        self.snapshots_refused_total.labels(model=model, reason=reason).inc()


class RequestRecorder:
    """`ServingMetrics.observe_request`, tallied in memory and written by `flush`.

    One dict lookup and a few integer additions per request; `flush` adds each key's count to
    the counter and its sum and bucket counts to the histogram (what as many ``observe`` calls
    would have added). Used from one event loop: requests and flushes never interleave.

    >>> from prometheus_client import CollectorRegistry
    >>> m = ServingMetrics(CollectorRegistry())
    >>> r = RequestRecorder(m)
    >>> for s in (0.002, 0.003, 0.3):
    ...     r.observe("/v1/models/{name}/predict", "lr", 200, s)
    >>> m.http_requests_total.labels("/v1/models/{name}/predict", "lr", "200")._value.get()
    0.0
    >>> r.flush()
    >>> m.http_requests_total.labels("/v1/models/{name}/predict", "lr", "200")._value.get()
    3.0
    >>> h = m.http_request_duration_seconds.labels("/v1/models/{name}/predict", "lr")
    >>> round(h._sum.get(), 3), [b.get() for b in h._buckets][:5]
    (0.305, [0.0, 0.0, 1.0, 1.0, 0.0])
    """

    def __init__(self, metrics: ServingMetrics) -> None:
        self._metrics = metrics
        self._bounds = list(HTTP_BUCKETS)
        # (route, model, status) → [count, sum of seconds, count per bucket (+Inf last)]
        self._tallies: dict[tuple[str, str, int], list[Any]] = {}

    def observe(self, route: str, model: str, status: int, seconds: float) -> None:
        tally = self._tallies.get((route, model, status))
        if tally is None:
            tally = self._tallies[(route, model, status)] = [0, 0.0, [0] * (len(self._bounds) + 1)]
        tally[0] += 1
        tally[1] += seconds
        tally[2][bisect.bisect_left(self._bounds, seconds)] += 1

    def flush(self) -> None:
        """Write the tallies into the Prometheus metrics and start afresh."""
        tallies, self._tallies = self._tallies, {}
        m = self._metrics
        for (route, model, status), (count, total, buckets) in tallies.items():
            m.http_requests_total.labels(route=route, model=model, status=str(status)).inc(count)
            histogram = m.http_request_duration_seconds.labels(route=route, model=model)
            histogram._sum.inc(total)  # Histogram.observe, in bulk
            for value, n in zip(histogram._buckets, buckets, strict=True):
                if n:
                    value.inc(n)

    @contextlib.asynccontextmanager
    async def flushing(self, every: float = FLUSH_SECONDS) -> AsyncIterator[None]:
        """Flush every ``every`` seconds on the running event loop while the block runs, and
        once at its end."""

        async def loop() -> None:
            while True:
                await asyncio.sleep(every)  # the flush period, not a synchronisation
                self.flush()

        task = asyncio.create_task(loop())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self.flush()


_metrics: ServingMetrics | None = None


def get_metrics() -> ServingMetrics:
    """The process-wide `ServingMetrics` on the default registry, created on first use."""
    global _metrics
    if _metrics is None:
        _metrics = ServingMetrics()
    return _metrics


def metrics_response_bytes(
    registry: CollectorRegistry | None = None,
) -> tuple[bytes, str]:
    """Body and content type of ``/metrics``: all workers' values in multiprocess mode."""
    if registry is None:
        path = os.environ.get(MULTIPROC_ENV)
        if path:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=path)
        else:
            registry = REGISTRY
    return generate_latest(registry), CONTENT_TYPE_LATEST
