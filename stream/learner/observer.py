"""The learner's Prometheus exporter: turns the loop's state into metrics, once per batch."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry

from schemas.settings import Settings
from stream.checkpoint.protocol import SnapshotResult
from stream.kafka.client import RecordRun
from stream.learner.observing import LearnerView
from stream.learner.telemetry import DriftMonitor, LearnerMetrics, Task, start_http_server

_REFRESH_SECONDS = 0.5
log = logging.getLogger(__name__)


class PrometheusObserver:
    """The `stream.learner.observing.Observer` the CLI gives the learner: called after each
    batch and each snapshot, it reads the learner (a `LearnerView`) into `LearnerMetrics`.
    It also exports its own failures, counted by the learner's guard (`report_failures`)."""

    def __init__(
        self,
        metrics: LearnerMetrics,
        server: tuple[WSGIServer, threading.Thread] | None = None,
    ) -> None:
        self.metrics = metrics
        self.server = server
        self._joined = dict.fromkeys(("joined", "expired", "orphan", "late"), 0)
        self._learned: dict[str, int] = {}
        self._dead: dict[str, int] = {}
        self._model_errors: dict[tuple[str, str, str], int] = {}
        self._last_refresh = 0.0
        self._drift: DriftMonitor | None = None
        self._drift_tasks: dict[str, Task] = {}
        metrics.mark_up()

    @classmethod
    def start(cls, settings: Settings) -> PrometheusObserver:
        metrics = LearnerMetrics(CollectorRegistry())
        server = None
        if settings.learner_metrics_port:
            try:
                server = start_http_server(
                    settings.learner_metrics_port, metrics.registry, addr=settings.metrics_host
                )
            except OSError as exc:  # learning matters more than its metrics
                log.error(
                    "cannot serve /metrics on %s:%d: %s",
                    settings.metrics_host, settings.learner_metrics_port, exc,
                )  # fmt: skip
        return cls(metrics, server)

    def report_failures(self, counts: Mapping[str, int]) -> None:
        """Export the guard's live count of this observer's failures (`ReportsFailures`):
        read at each scrape, not by this observer's calls, which may be what fails."""
        self.metrics.report_observer_errors(counts)

    def close(self) -> None:
        self.metrics.mark_down()
        if self.server is not None:
            self.server[0].shutdown()

    def after_batch(self, learner: LearnerView, records: list[RecordRun]) -> None:
        m = self.metrics
        if records:
            by_topic: dict[str, int] = {}
            for run in records:
                by_topic[run.topic] = by_topic.get(run.topic, 0) + len(run)
            for topic, n in by_topic.items():
                m.events_consumed(topic, n)
        now = time.monotonic()
        if now - self._last_refresh < _REFRESH_SECONDS and records:
            return
        self._last_refresh = now
        self._refresh(learner)

    def _refresh(self, learner: LearnerView) -> None:
        m = self.metrics
        core = learner.core
        c = core.counters
        current = {
            "joined": c.labels_joined,
            "expired": c.expired_without_label,
            "orphan": c.orphan_labels,
            "late": c.late_events,
        }
        m.join_outcomes({k: v - self._joined[k] for k, v in current.items() if v > self._joined[k]})
        self._joined = current
        for reason, n in learner.stats.dead_letters.items():
            if n > self._dead.get(reason, 0):
                m.dead_letter(reason, n - self._dead.get(reason, 0))
                self._dead[reason] = n
        m.redis_up.set(int(learner.outage.up))
        for key, n in core.model_errors.items():
            if n > self._model_errors.get(key, 0):
                m.model_errors(*key, n - self._model_errors.get(key, 0))
                self._model_errors[key] = n
        for name, state in core.models.items():
            m.set_progressive_metrics(name, state.metric_values())
            done = state.samples_learned - self._learned.get(name, 0)
            if done > 0:
                m.samples_learned(name, done)
            self._learned[name] = state.samples_learned
        # every kept one: the series of what the core dropped go (learners.served)
        m.set_served_metrics(core.served_metric_values())
        m.set_comparisons({
            (c.champion, c.challenger): c.stats.summary(0.0, c.min_samples)
            for c in [*core.comparisons.values(), *core.served_comparisons.values()]
        })  # fmt: skip
        for name, seconds in learner.timings().items():
            m.observe_predict(name, seconds["predict"])
            m.observe_learn(name, seconds["learn"])
        lags = learner.lags()
        for topic, per_partition in lags.items():
            m.set_consumer_lag(topic, per_partition)
        delay = learner.watermark_delay()
        if delay is not None:
            m.set_watermark_delay(delay)
        self._update_drift(learner)

    def _update_drift(self, learner: LearnerView) -> None:
        outcomes = learner.core.drain_outcomes()
        if not outcomes:
            return
        if self._drift is None:
            self._drift_tasks = {
                name: "classification" if state.kind == "classifier" else "regression"
                for name, state in learner.core.models.items()
                if state.kind in ("classifier", "regressor")
            }
            self._drift = DriftMonitor(self._drift_tasks)
        for name, y_true, y_pred in outcomes:
            if name in self._drift_tasks and self._drift.update(name, y_true, y_pred):
                self.metrics.drift_detected(name)

    def snapshot(self, learner: LearnerView, result: SnapshotResult) -> None:
        if not result.ok:
            return
        for name in learner.core.models:
            # None: not read back (a forked child wrote it and Redis went away right after):
            # the size stays unknown rather than read here, where an outage would stop learning
            self.metrics.snapshot_written(
                name, result.version, result.sizes.get(name), result.seconds, result.stall_seconds
            )
