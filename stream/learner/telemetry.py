"""Prometheus metrics of the learner, and a small drift monitor on its error stream.

`LearnerMetrics` builds every learner metric on the registry it is given (tests pass a private
`CollectorRegistry`), and offers one method per thing the processor knows, meant to be called
once per batch, not once per event. Names follow Prometheus conventions: a ``riverstream_``
prefix, units in the name (``_seconds``, ``_bytes``), ``_total`` on counters, and labels whose
values come from bounded sets (topic, partition, model, metric, reason, outcome) — never an
event id, a key or a free-form message.

The catalogue (type, labels):

====================================================  =========  =========================
riverstream_events_consumed_total                     counter    topic
riverstream_dead_letters_total                        counter    reason
riverstream_model_errors_total                        counter    model, reason (stage:error)
riverstream_join_events_total                         counter    outcome (see JOIN_OUTCOMES)
riverstream_predict_seconds                           histogram  model
riverstream_learn_seconds                             histogram  model
riverstream_consumer_lag                              gauge      topic, partition
riverstream_watermark_delay                           gauge      (event-time units)
riverstream_progressive_metric                        gauge      model, metric
riverstream_samples_learned_total                     counter    model
riverstream_snapshot_version                          gauge      model
riverstream_snapshot_size_bytes                       gauge      model
riverstream_snapshot_timestamp_seconds                gauge      model
riverstream_snapshot_duration_seconds                 histogram
riverstream_learner_stall_seconds                     histogram
riverstream_drift_detections_total                    counter    model
riverstream_learner_up                                gauge
riverstream_redis_up                                  gauge      (0 during an outage)
riverstream_learner_last_event_timestamp_seconds      gauge
riverstream_comparison_labels                         gauge      model, challenger
riverstream_comparison_champion_loss                  gauge      model, challenger
riverstream_comparison_challenger_loss                gauge      model, challenger
riverstream_comparison_difference                     gauge      model, challenger
riverstream_comparison_lower                          gauge      model, challenger
riverstream_comparison_upper                          gauge      model, challenger
riverstream_comparison_decision                       gauge      model, challenger
riverstream_served_metric                             gauge      model, version, metric
riverstream_learner_observer_errors_total             counter    reason (exception type)
====================================================  =========  =========================

The ``riverstream_comparison_*`` gauges describe each champion/challenger comparison of the
core (`learners.comparisons`): ``model`` is the champion, ``challenger`` the challenger (both
model names, a bounded set). Losses are the 0/1 error (classifiers) or absolute error
(regressors) over the labels both scored; the difference is champion loss minus challenger
loss (positive: the challenger is better), lower/upper its anytime-valid interval (±Inf
before it is defined), decision +1 (challenger better), -1 (champion better) or 0.

Series of what the core no longer keeps are removed: ``riverstream_served_metric`` of the
versions past the latest ones of each model (`learners.served.VERSIONS_KEPT`) and the
comparisons of the graph versions past them, so that a learner running for weeks exports a
bounded number of series (`LearnerMetrics.set_served_metrics`, `LearnerMetrics.set_comparisons`).

``riverstream_learner_observer_errors_total`` counts the exceptions the learner's observer
raised, which the loop logged and rode out (`stream.learner.observing.GuardedObserver`). The
observer that failed cannot be trusted to report its own failures, so it does not: the guard
hands its live count over once (`LearnerMetrics.report_observer_errors`) and the count is read
at each scrape, in the HTTP server's thread, whatever the observer's calls do.

`DriftMonitor` is pure (River detectors, no I/O): the processor feeds it (y_true, y_pred) and
calls `LearnerMetrics.drift_detected` when it returns True. Its state is not part of a snapshot:
after a restart the detectors start afresh, which only delays a detection.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Literal
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import start_http_server as _start_http_server
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector
from river import base, drift

from learners.compare import ComparisonSummary
from schemas.errors import ConfigError
from schemas.events import Label

JOIN_OUTCOMES = frozenset({"joined", "expired", "orphan", "late"})
"""joined: label met its features; expired: features evicted before their label came;
orphan: label with no features; late: label after the features were already learned/evicted."""

# predict_one / learn_one cost 1 µs .. 1 ms for most River models, up to ~1 s for large forests.
MODEL_CALL_BUCKETS = (
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4,
    1e-3, 2.5e-3, 1e-2, 0.1, 1.0,
)  # fmt: skip
# Snapshots span five orders of magnitude: 0.03 ms (linear model) to seconds (forests).
SNAPSHOT_BUCKETS = (1e-4, 1e-3, 1e-2, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

Task = Literal["classification", "regression"]


class _ObserverErrors(Collector):
    """``riverstream_learner_observer_errors_total``, read at each scrape from the count the
    learner's guard keeps (a dict it updates in the learning thread; copying a dict of strings
    and ints is atomic under the GIL)."""

    def __init__(self) -> None:
        self.counts: Mapping[str, int] = {}

    def _family(self, counts: Mapping[str, int]) -> CounterMetricFamily:
        family = CounterMetricFamily(
            "riverstream_learner_observer_errors",
            "Exceptions of the learner's observer (metrics not exported), logged and ridden "
            "out; by exception type.",
            labels=["reason"],
        )
        for reason, n in sorted(counts.items()):
            family.add_metric([reason], float(n))
        return family

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield self._family({})

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield self._family(dict(self.counts))


class LearnerMetrics:
    """Every learner metric, registered on ``registry``.

    >>> from prometheus_client import CollectorRegistry, generate_latest
    >>> m = LearnerMetrics(CollectorRegistry())
    >>> m.events_consumed("riverstream.features", 32)
    >>> b"riverstream_events_consumed_total{topic=\\"riverstream.features\\"} 32.0" in (
    ...     generate_latest(m.registry))
    True
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        r = registry
        self.events_consumed_total = Counter(
            "riverstream_events_consumed", "Events read from Kafka.", ["topic"], registry=r
        )
        self.dead_letters_total = Counter(
            "riverstream_dead_letters", "Events sent to the dead-letter topic.", ["reason"],
            registry=r,
        )  # fmt: skip
        self.model_errors_total = Counter(
            "riverstream_model_errors",
            "Events a model raised on (predict or learn), skipped for that model.",
            ["model", "reason"], registry=r,
        )  # fmt: skip
        self.join_events_total = Counter(
            "riverstream_join_events", "Outcomes of joining labels to features.", ["outcome"],
            registry=r,
        )  # fmt: skip
        self.predict_seconds = Histogram(
            "riverstream_predict_seconds", "Duration of one predict_one call.", ["model"],
            buckets=MODEL_CALL_BUCKETS, registry=r,
        )  # fmt: skip
        self.learn_seconds = Histogram(
            "riverstream_learn_seconds", "Duration of one learn_one call.", ["model"],
            buckets=MODEL_CALL_BUCKETS, registry=r,
        )  # fmt: skip
        self.consumer_lag = Gauge(
            "riverstream_consumer_lag", "Messages behind the end of the partition.",
            ["topic", "partition"], registry=r,
        )  # fmt: skip
        self.watermark_delay = Gauge(
            "riverstream_watermark_delay",
            "Newest event time seen minus the event-time watermark (event-time units).",
            registry=r,
        )
        self.served_metric = Gauge(
            "riverstream_served_metric",
            "Quality of the answers the API actually gave (logged with an id), by model version.",
            ["model", "version", "metric"], registry=r,
        )  # fmt: skip
        self.progressive_metric = Gauge(
            "riverstream_progressive_metric", "Progressive validation metric.",
            ["model", "metric"], registry=r,
        )  # fmt: skip
        self.samples_learned_total = Counter(
            "riverstream_samples_learned", "Samples learned by this process.", ["model"],
            registry=r,
        )  # fmt: skip
        self.snapshot_version = Gauge(
            "riverstream_snapshot_version", "Version of the last snapshot written.", ["model"],
            registry=r,
        )  # fmt: skip
        self.snapshot_size_bytes = Gauge(
            "riverstream_snapshot_size_bytes", "Size of the last snapshot written.", ["model"],
            registry=r,
        )  # fmt: skip
        self.snapshot_timestamp_seconds = Gauge(
            "riverstream_snapshot_timestamp_seconds",
            "Unix time the last snapshot was written; age = time() - this.", ["model"],
            registry=r,
        )  # fmt: skip
        self.snapshot_duration_seconds = Histogram(
            "riverstream_snapshot_duration_seconds", "Time to write one snapshot.",
            buckets=SNAPSHOT_BUCKETS, registry=r,
        )  # fmt: skip
        self.learner_stall_seconds = Histogram(
            "riverstream_learner_stall_seconds",
            "Time the learning loop was blocked while a snapshot was taken.",
            buckets=SNAPSHOT_BUCKETS, registry=r,
        )  # fmt: skip
        self.drift_detections_total = Counter(
            "riverstream_drift_detections", "Drifts detected on the error stream.", ["model"],
            registry=r,
        )  # fmt: skip
        self.learner_up = Gauge("riverstream_learner_up", "1 while the learner runs.", registry=r)
        self.redis_up = Gauge(
            "riverstream_redis_up", "1 while the learner reaches Redis (0: outage).", registry=r
        )
        self.redis_up.set(1)
        self.last_event_timestamp_seconds = Gauge(
            "riverstream_learner_last_event_timestamp_seconds",
            "Unix time the learner last processed an event.", registry=r,
        )  # fmt: skip
        pair = ["model", "challenger"]
        self.comparison_labels = Gauge(
            "riverstream_comparison_labels", "Labels both models of a comparison scored.", pair,
            registry=r,
        )  # fmt: skip
        self.comparison_champion_loss = Gauge(
            "riverstream_comparison_champion_loss",
            "Mean loss of the champion (the model label) over the compared labels.", pair, registry=r,
        )  # fmt: skip
        self.comparison_challenger_loss = Gauge(
            "riverstream_comparison_challenger_loss",
            "Mean loss of the challenger over the compared labels.", pair, registry=r,
        )  # fmt: skip
        self.comparison_difference = Gauge(
            "riverstream_comparison_difference",
            "Champion loss minus challenger loss (positive: the challenger is better).", pair,
            registry=r,
        )  # fmt: skip
        self.comparison_lower = Gauge(
            "riverstream_comparison_lower",
            "Lower end of the anytime-valid interval of the difference.", pair, registry=r,
        )  # fmt: skip
        self.comparison_upper = Gauge(
            "riverstream_comparison_upper",
            "Upper end of the anytime-valid interval of the difference.", pair, registry=r,
        )  # fmt: skip
        self.comparison_decision = Gauge(
            "riverstream_comparison_decision",
            "1: the challenger is better, -1: the champion is, 0: undecided.", pair, registry=r,
        )  # fmt: skip
        self._observer_errors = _ObserverErrors()
        r.register(self._observer_errors)
        for outcome in sorted(JOIN_OUTCOMES):  # bounded and known: export zeros from the start
            self.join_events_total.labels(outcome=outcome)
        self._served: set[tuple[str, str, str]] = set()  # served_metric's children
        self._compared: set[tuple[str, str]] = set()  # the comparison gauges' children

    # -- lifecycle --
    def mark_up(self) -> None:
        self.learner_up.set(1)

    def mark_down(self) -> None:
        self.learner_up.set(0)

    def report_observer_errors(self, counts: Mapping[str, int]) -> None:
        """Export ``counts``, the observer's failures by exception type, as
        ``riverstream_learner_observer_errors_total``: the live count, kept and updated by the
        learner's guard (`stream.learner.observing.LearnerStats.observer_errors`), read at each
        scrape (see the module).

        >>> from prometheus_client import CollectorRegistry
        >>> m, counts = LearnerMetrics(CollectorRegistry()), {}
        >>> m.report_observer_errors(counts)
        >>> counts["TypeError"] = 2  # the guard counts a failure
        >>> m.registry.get_sample_value(
        ...     "riverstream_learner_observer_errors_total", {"reason": "TypeError"})
        2.0
        """
        self._observer_errors.counts = counts

    # -- per batch --
    def events_consumed(self, topic: str, n: int = 1, now: float | None = None) -> None:
        """Count ``n`` events read from ``topic`` and stamp the last-event time."""
        self.events_consumed_total.labels(topic=topic).inc(n)
        self.last_event_timestamp_seconds.set(time.time() if now is None else now)

    def model_errors(self, model: str, stage: str, error: str, n: int) -> None:
        self.model_errors_total.labels(model=model, reason=f"{stage}:{error}").inc(n)

    def dead_letter(self, reason: str, n: int = 1) -> None:
        """Count dead letters; ``reason`` is a `SchemaError.reason`-like code, not a message."""
        self.dead_letters_total.labels(reason=reason).inc(n)

    def join_outcomes(self, counts: Mapping[str, int]) -> None:
        """Add a batch's join outcomes, e.g. ``{"joined": 30, "orphan": 2}``."""
        for outcome, n in counts.items():
            if outcome not in JOIN_OUTCOMES:
                raise ValueError(f"unknown join outcome {outcome!r}; expected {JOIN_OUTCOMES}")
            if n:
                self.join_events_total.labels(outcome=outcome).inc(n)

    def observe_predict(self, model: str, seconds: Iterable[float]) -> None:
        """Record predict_one durations (a batch, or a 1-in-N sample of it)."""
        child = self.predict_seconds.labels(model=model)
        for s in seconds:
            child.observe(s)

    def observe_learn(self, model: str, seconds: Iterable[float]) -> None:
        """Record learn_one durations (a batch, or a 1-in-N sample of it)."""
        child = self.learn_seconds.labels(model=model)
        for s in seconds:
            child.observe(s)

    def samples_learned(self, model: str, n: int) -> None:
        self.samples_learned_total.labels(model=model).inc(n)

    def set_served_metrics(self, values: Mapping[tuple[str, int], Mapping[str, float]]) -> None:
        """Publish the served metrics the core keeps, ``{(model, version): {metric: value}}``
        (`learners.core.LearningCore.served_metric_values`): all of them, so the series of a
        version no longer in ``values`` (dropped by the core) are removed.

        >>> from prometheus_client import CollectorRegistry
        >>> m = LearnerMetrics(CollectorRegistry())
        >>> m.set_served_metrics({("lr", 1): {"Accuracy": 0.8}, ("lr", 2): {"Accuracy": 0.9}})
        >>> m.set_served_metrics({("lr", 2): {"Accuracy": 0.9}, ("lr", 3): {"Accuracy": 0.7}})
        >>> sorted(s.labels["version"] for s in m.served_metric.collect()[0].samples)
        ['2', '3']
        """
        exported = set()
        for (model, version), by_metric in values.items():
            for metric, value in by_metric.items():
                labels = (model, str(version), metric)
                self.served_metric.labels(*labels).set(value)
                exported.add(labels)
        for labels in self._served - exported:
            self.served_metric.remove(*labels)
        self._served = exported

    def set_progressive_metrics(self, model: str, values: Mapping[str, float]) -> None:
        """Publish the current progressive metrics of ``model``, e.g. ``{"Accuracy": 0.91}``."""
        for metric, value in values.items():
            self.progressive_metric.labels(model=model, metric=metric).set(value)

    def set_consumer_lag(self, topic: str, lags: Mapping[int, int]) -> None:
        """Publish the lag of each partition of ``topic`` (end offset - position)."""
        for partition, lag in lags.items():
            self.consumer_lag.labels(topic=topic, partition=str(partition)).set(lag)

    def set_watermark_delay(self, delay: float) -> None:
        self.watermark_delay.set(delay)

    # -- snapshots and drift --
    def snapshot_written(
        self,
        model: str,
        version: int,
        size_bytes: int | None,
        duration_seconds: float,
        stall_seconds: float,
        timestamp: float | None = None,
    ) -> None:
        """Record a snapshot of ``model`` written, and how long learning was blocked by it
        (``size_bytes`` None: not known, the size gauge keeps its value)."""
        self.snapshot_version.labels(model=model).set(version)
        if size_bytes is not None:
            self.snapshot_size_bytes.labels(model=model).set(size_bytes)
        self.snapshot_timestamp_seconds.labels(model=model).set(
            time.time() if timestamp is None else timestamp
        )
        self.snapshot_duration_seconds.observe(duration_seconds)
        self.learner_stall_seconds.observe(stall_seconds)

    def drift_detected(self, model: str) -> None:
        self.drift_detections_total.labels(model=model).inc()

    def set_comparisons(self, summaries: Mapping[tuple[str, str], ComparisonSummary]) -> None:
        """Publish every comparison the core keeps, by ``(champion, challenger)``
        (`set_comparison`), and remove the series of those no longer in ``summaries`` (a graph
        version's shadow pair the core dropped, `learners.served.VERSIONS_KEPT`)."""
        for (champion, challenger), summary in summaries.items():
            self.set_comparison(champion, challenger, summary)
        for pair in self._compared - summaries.keys():
            self.remove_comparison(*pair)
        self._compared = set(summaries)

    def remove_comparison(self, champion: str, challenger: str) -> None:
        """Remove the series of one comparison (none is an error)."""
        for gauge in (
            self.comparison_labels, self.comparison_champion_loss,
            self.comparison_challenger_loss, self.comparison_difference, self.comparison_lower,
            self.comparison_upper, self.comparison_decision,
        ):  # fmt: skip
            gauge.remove(champion, challenger)

    def set_comparison(self, champion: str, challenger: str, summary: ComparisonSummary) -> None:
        """Publish one champion/challenger comparison (`PairedComparison.summary`).

        >>> from prometheus_client import CollectorRegistry
        >>> from learners.compare import PairedComparison
        >>> m, cmp = LearnerMetrics(CollectorRegistry()), PairedComparison()
        >>> cmp.update_correct(False, True)
        >>> m.set_comparison("tree", "hat", cmp.summary())
        >>> m.registry.get_sample_value(
        ...     "riverstream_comparison_difference", {"model": "tree", "challenger": "hat"})
        1.0
        """
        labels = {"model": champion, "challenger": challenger}
        decision = {"b_better": 1, "a_better": -1}.get(summary["decision"], 0)
        self.comparison_labels.labels(**labels).set(summary["n"])
        self.comparison_decision.labels(**labels).set(decision)
        self.comparison_lower.labels(**labels).set(summary["lower"])
        self.comparison_upper.labels(**labels).set(summary["upper"])
        if summary["n"]:  # NaN before the first label: leave the gauges unset
            self.comparison_champion_loss.labels(**labels).set(summary["loss_a"])
            self.comparison_challenger_loss.labels(**labels).set(summary["loss_b"])
            self.comparison_difference.labels(**labels).set(summary["difference"])


def start_http_server(
    port: int, registry: CollectorRegistry, addr: str = "0.0.0.0"
) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``/metrics`` of ``registry`` on ``addr:port`` from a daemon thread.

    Returns ``(server, thread)``; call ``server.shutdown()`` to stop it.
    """
    return _start_http_server(port, addr=addr, registry=registry)


class DriftMonitor:
    """Concept-drift detection on each model's error stream.

    Classifiers feed ADWIN with the 0/1 error (a missing prediction counts as an error);
    regressors feed Page-Hinkley with the absolute error (a missing prediction is skipped).

    >>> monitor = DriftMonitor({"lr": "classification"})
    >>> detected = [monitor.update("lr", True, True) for _ in range(1000)]
    >>> detected += [monitor.update("lr", True, False) for _ in range(1000)]
    >>> any(detected[:1000]), any(detected[1000:])
    (False, True)
    """

    def __init__(self, tasks: Mapping[str, Task]) -> None:
        self._detectors: dict[str, tuple[Task, base.DriftDetector]] = {}
        for model, task in tasks.items():
            if task == "classification":
                self._detectors[model] = (task, drift.ADWIN())
            elif task == "regression":
                self._detectors[model] = (task, drift.PageHinkley())
            else:
                raise ConfigError(f"model {model!r}: task must be classification or regression")

    def update(self, model_name: str, y_true: Label, y_pred: Label | None) -> bool:
        """Feed one (label, prediction) pair; True when a drift was just detected."""
        try:
            task, detector = self._detectors[model_name]
        except KeyError:
            raise ConfigError(f"model {model_name!r} is not monitored for drift") from None
        if task == "classification":
            error = 0.0 if y_pred is not None and y_pred == y_true else 1.0
        else:
            if y_pred is None:
                return False
            try:  # a label that is not a number (a model error of the core) or past floats
                error = abs(float(y_true) - float(y_pred))
            except (TypeError, ValueError, ArithmeticError):
                return False
            if not math.isfinite(error):
                return False
        detector.update(error)
        return detector.drift_detected
