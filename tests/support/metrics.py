"""Shared fixtures: registries in which every riverstream metric has been touched once."""

from __future__ import annotations

from collections.abc import Iterable
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry

from learners.core import LearningCore
from schemas.events import FeatureEvent, LabelEvent, Served, ShadowAnswer
from serving.graphs import GraphMetrics
from serving.telemetry import ServingMetrics
from stream.learner.telemetry import LearnerMetrics
from stream.predict.metrics import WorkerMetrics


def touch_learner(m: LearnerMetrics, now: float) -> None:
    """Give every learner metric (and label set the dashboards use) a value."""
    m.mark_up()
    m.events_consumed("riverstream.features", 50, now=now)
    m.events_consumed("riverstream.labels", 50, now=now)
    m.dead_letter("not_finite")
    m.model_errors("lr", "learn", "LabelTypeError", 1)
    m.join_outcomes({"joined": 45, "expired": 1, "orphan": 1, "late": 1})
    m.observe_predict("lr", [3e-6, 4e-6])
    m.observe_learn("lr", [1e-5, 2e-5])
    m.samples_learned("lr", 45)
    m.set_progressive_metrics("lr", {"Accuracy": 0.9})
    m.set_served_metrics({("lr", 7): {"Accuracy": 0.88}})
    m.report_observer_errors({"TypeError": 1})
    m.set_consumer_lag("riverstream.features", {0: 3, 1: 0})
    m.set_watermark_delay(2.0)
    m.snapshot_written("lr", version=7, size_bytes=1500, duration_seconds=3e-5,
                       stall_seconds=1e-5, timestamp=now)  # fmt: skip
    m.drift_detected("lr")
    m.set_comparison("lr", "tree", {
        "kind": "classification", "n": 45, "loss_a": 0.2, "loss_b": 0.1, "accuracy_a": 0.8,
        "accuracy_b": 0.9, "difference": 0.1, "lower": 0.02, "upper": 0.18,
        "decision": "b_better",
    })  # fmt: skip


def touch_serving(m: ServingMetrics, now: float) -> None:
    m.observe_request("/models/{name}/predict", "lr", 200, 0.002)
    m.observe_request("/models/{name}/predict", "lr", 500, 0.003)
    m.snapshot_swapped("lr", version=7, snapshot_timestamp=now, load_seconds=0.001)
    m.snapshot_refused("lr", "bad_signature")
    m.closed_loop_publish_failures_total.labels("not_acknowledged").inc()
    touch_graphs(GraphMetrics.for_registry(m.registry))  # on the API's registry


def touch_graphs(g: GraphMetrics) -> None:
    """The graphs' and shadows' metrics (of the API, and of a prediction worker)."""
    g.graph_swapped("fraud", 3)
    g.graph_refused("fraud", "invalid")
    shadow = {"graph": "fraud", "shadow": "root.shadow.shadows[0]"}
    g.shadow_runs.labels(**shadow).inc()
    g.shadow_agreements.labels(**shadow).inc()
    g.shadow_errors.labels(**shadow, reason="TypeError").inc()
    g.shadow_dropped.labels(graph="fraud").inc()
    g.shadow_duration_seconds.labels(**shadow).observe(1e-4)


def touch_worker(m: WorkerMetrics) -> None:
    """Every prediction worker metric, and the shadows' (on the worker's registry as well)."""
    m.up.set(1)
    m.requests.inc(3)
    m.answered({"lr": 1, "fraud": 1}, [0.01, 0.02])
    m.dead_letters.labels(reason="bad_json").inc()
    m.retries.inc()
    m.snapshot_swapped("lr", 7, 0.0, 0.001)
    m.graph_swapped("fraud", 3)
    m.set_lag({("riverstream.requests", 0): 2})
    touch_graphs(GraphMetrics.for_registry(m.registry))  # shadows run in the worker too


@pytest.fixture
def learner_metrics() -> LearnerMetrics:
    m = LearnerMetrics(CollectorRegistry())
    touch_learner(m, 1.7e9)
    return m


@pytest.fixture
def serving_metrics() -> ServingMetrics:
    m = ServingMetrics(CollectorRegistry())
    touch_serving(m, 1.7e9)
    return m


@pytest.fixture
def worker_metrics() -> WorkerMetrics:
    m = WorkerMetrics(CollectorRegistry())
    touch_worker(m)
    return m


class View:
    """The little of a learner the observer reads, around a real core."""

    def __init__(self, core: LearningCore) -> None:
        self.core = core
        self.stats = SimpleNamespace(dead_letters={})
        self.outage = SimpleNamespace(up=True)

    def timings(self) -> dict[str, dict[str, list[float]]]:
        return {}

    def lags(self) -> dict[str, dict[int, int]]:
        return {}

    def watermark_delay(self) -> float | None:
        return None


SHADOW_BRANCH = "root.shadow.shadows[0]"


def push_served(core: LearningCore, versions: Iterable[int], per_version: int = 2) -> None:
    """Push and join logged answers naming each of ``versions``: ``per_version`` answers of
    model ``lr`` and as many of graph ``g`` (which used ``lr``, with one shadow branch,
    `SHADOW_BRANCH`); the answers, right or wrong, depend on the event only. Ids and offsets
    go on from the core's count of processed events, so calls can follow one another."""
    n = core.counters.features_processed  # the next offset, in both topics
    for version in versions:
        for _ in range(per_version):
            i = n // 2
            y = i % 3 != 0
            answer = y if i % 5 else not y
            proba = {"true": 0.7, "false": 0.3} if answer else {"true": 0.3, "false": 0.7}
            shadow = {SHADOW_BRANCH: ShadowAnswer(y if i % 4 else not y)}
            for kind, served in (
                ("m", Served("lr", version, answer, proba)),
                ("g", Served("g", version, answer, None, {"lr": version}, shadow)),
            ):
                event = f"{kind}{i}"
                core.push_feature(FeatureEvent(event, float(i), {"x": 1.0}, served), (0, 0), n)
                core.push_label(LabelEvent(event, float(i), y), (1, 0), n)
                n += 1
    core.flush()
