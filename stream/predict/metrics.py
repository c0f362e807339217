"""The prediction worker's Prometheus metrics, served on ``--metrics-port``
(``RIVERSTREAM_PREDICT_METRICS_PORT``; 0: none).

| metric | labels | what |
|---|---|---|
| ``riverstream_predict_requests_total`` | | requests consumed |
| ``riverstream_predict_answers_total`` | ``model`` (the target: a model or a graph) | answers acknowledged by the broker |
| ``riverstream_predict_dead_letters_total`` | ``reason`` | requests dead-lettered |
| ``riverstream_predict_latency_seconds`` | | request's Kafka timestamp → its answer acknowledged |
| ``riverstream_predict_batch_retries_total`` | | batches answered again (the broker refused messages) |
| ``riverstream_predict_model_version`` | ``model`` | model version the worker answers with |
| ``riverstream_predict_graph_version`` | ``graph`` | graph version the worker answers with |
| ``riverstream_predict_consumer_lag`` | ``topic``, ``partition`` | requests not yet consumed, per assigned partition |
| ``riverstream_predict_up`` | | 1 while the worker runs |

Shadows of graph targets are counted by the API's own metrics (``riverstream_shadow_*``, same
names and labels) on the same registry.

>>> from prometheus_client import CollectorRegistry, generate_latest
>>> m = WorkerMetrics(CollectorRegistry())
>>> m.answered({"lr": 3}, [0.01, 0.02])
>>> m.snapshot_swapped("lr", 4, 0.0, 0.1)
>>> text = generate_latest(m.registry).decode()
>>> 'riverstream_predict_answers_total{model="lr"} 3.0' in text
True
>>> 'riverstream_predict_model_version{model="lr"} 4.0' in text
True
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class FollowerLog:
    """`stream.store.follower.FollowerMetrics` and `GraphFollowerMetrics` as log lines."""

    def snapshot_swapped(
        self, model: str, version: int, snapshot_timestamp: float, load_seconds: float
    ) -> None:
        log.info("answering with %s v%d (loaded in %.1f ms)", model, version, load_seconds * 1e3)

    def snapshot_refused(self, model: str, reason: str) -> None:
        log.warning("refused a snapshot of %s: %s", model, reason)

    def graph_swapped(self, graph: str, version: int) -> None:
        log.info("answering with graph %s v%d", graph, version)

    def graph_refused(self, graph: str, reason: str) -> None:
        log.warning("refused a version of graph %s: %s", graph, reason)


class WorkerMetrics(FollowerLog):
    """The worker's counters and gauges on ``registry``; as the followers' metrics, the
    versions served too (and the log lines of `FollowerLog`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = self.registry = registry
        self.requests = Counter(
            "riverstream_predict_requests", "Prediction requests consumed.", registry=r
        )
        self.answers = Counter(
            "riverstream_predict_answers", "Answers acknowledged by the broker, by target.",
            ["model"], registry=r,
        )  # fmt: skip
        self.dead_letters = Counter(
            "riverstream_predict_dead_letters", "Requests dead-lettered, by reason.", ["reason"],
            registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "riverstream_predict_latency_seconds",
            "From a request's Kafka timestamp to its answer acknowledged by the broker.",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.retries = Counter(
            "riverstream_predict_batch_retries", "Batches answered again (messages refused).",
            registry=r,
        )  # fmt: skip
        self.model_version = Gauge(
            "riverstream_predict_model_version", "Model version the worker answers with.",
            ["model"], registry=r,
        )  # fmt: skip
        self.graph_version = Gauge(
            "riverstream_predict_graph_version", "Graph version the worker answers with.",
            ["graph"], registry=r,
        )  # fmt: skip
        self.lag = Gauge(
            "riverstream_predict_consumer_lag", "Requests not consumed yet, per partition.",
            ["topic", "partition"], registry=r,
        )  # fmt: skip
        self.up = Gauge("riverstream_predict_up", "1 while the worker runs.", registry=r)

    def answered(self, targets: Mapping[str, int], latencies: Iterable[float]) -> None:
        """A batch acknowledged: answers per target, and each answer's latency."""
        for target, n in targets.items():
            self.answers.labels(model=target).inc(n)
        observe = self.latency.observe
        for seconds in latencies:
            observe(seconds)

    def set_lag(self, lags: Mapping[tuple[str, int], int]) -> None:
        """The lag of the partitions assigned now (the others' series are removed)."""
        for labels in {(s.labels["topic"], s.labels["partition"])
                       for f in self.lag.collect() for s in f.samples}:  # fmt: skip
            if (labels[0], int(labels[1])) not in lags:
                self.lag.remove(*labels)
        for (topic, partition), lag in lags.items():
            self.lag.labels(topic=topic, partition=str(partition)).set(lag)

    def snapshot_swapped(
        self, model: str, version: int, snapshot_timestamp: float, load_seconds: float
    ) -> None:
        self.model_version.labels(model=model).set(version)
        super().snapshot_swapped(model, version, snapshot_timestamp, load_seconds)

    def graph_swapped(self, graph: str, version: int) -> None:
        self.graph_version.labels(graph=graph).set(version)
        super().graph_swapped(graph, version)


def serve_metrics(
    registry: CollectorRegistry, port: int, host: str
) -> tuple[WSGIServer, threading.Thread] | None:
    """``/metrics`` of ``registry`` on ``host:port`` from a daemon thread; None when ``port`` is
    0 or taken (answering matters more than its metrics: the error is logged)."""
    if not port:
        return None
    try:
        return start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        log.error("cannot serve /metrics on %s:%d: %s", host, port, exc)
        return None
