"""Valid events that no model (or no metric) can use never stop the learner, against the real
Kafka and Redis: the observer's failures are counted and logged, an unusable event with an
integer beyond 64 bits is dead-lettered, and none of many unusable events is dropped."""

from __future__ import annotations

from typing import Any

import orjson

from learners.specs import ModelSpec
from schemas.events import FeatureEvent, LabelEvent
from schemas.settings import Settings
from stream.kafka.client import read_all
from stream.learner.observer import PrometheusObserver
from stream.learner.runtime import build_learner
from tests.support.pipeline import fast, publish, run_to_end

N = 40


def regression(n: int = N) -> list[FeatureEvent | LabelEvent]:
    events: list[FeatureEvent | LabelEvent] = []
    for i in range(n):
        events.append(FeatureEvent(str(i), float(i), {"x": float(i % 5)}))
        events.append(LabelEvent(str(i), float(i) + 0.5, float(i % 5) * 2.0))
    return events


def model_error_dead_letters(settings: Settings) -> list[Any]:
    dead = read_all(settings.kafka_bootstrap_servers or "", [settings.topic_dlq])
    return [r for r in dead if dict(r.headers)["rs.reason"] == b"model_error"]


def test_labels_the_prometheus_observer_cannot_read_do_not_stop_the_learner(
    settings: Settings,
) -> None:
    """A regressor's string label and one past the floats (the drift monitor's float() raised),
    then a tree's prediction on a string (the latency sample re-predicted unguarded)."""
    s = fast(settings)
    events = regression()
    events += [
        FeatureEvent("s", float(N), {"x": 1.0}),
        LabelEvent("s", N + 0.5, "oops"),
        FeatureEvent("h", N + 1.0, {"x": 1.0}),
        LabelEvent("h", N + 1.5, 10**400),
    ]
    events += [FeatureEvent("t", N + 2.0, {"x": "red"})]  # the latest features: a string
    publish(s, events)
    observer = PrometheusObserver.start(s)
    learner = build_learner(
        s, [ModelSpec("r", "linreg"), ModelSpec("t", "hoeffding-reg")], observer=observer,
        use_fork=False,
    )  # fmt: skip
    summaries = run_to_end(learner)
    assert {line["model"]: line["samples_learned"] for line in summaries} == {"r": N, "t": N}
    assert learner.stats.observer_errors == {}  # the observer itself copes with them
    sample = observer.metrics.registry.get_sample_value
    assert sample("riverstream_samples_learned_total", {"model": "r"}) == N


class Failing:
    """An observer with a bug: every call raises."""

    def __init__(self) -> None:
        self.calls = 0

    def after_batch(self, learner: Any, records: list[Any]) -> None:
        self.calls += 1
        raise RuntimeError("a bug in the observer")

    def snapshot(self, learner: Any, result: Any) -> None:
        raise KeyError("snapshot")

    def close(self) -> None:
        raise RuntimeError("close")


def test_an_observer_that_raises_is_counted_and_learning_goes_on(settings: Settings) -> None:
    s = fast(settings)
    publish(s, regression())
    failing = Failing()
    learner = build_learner(s, [ModelSpec("r", "linreg")], observer=failing, use_fork=False)
    [summary] = run_to_end(learner)
    assert summary["samples_learned"] == N
    errors = learner.stats.observer_errors
    assert errors["RuntimeError"] == failing.calls + 1 >= 2  # every batch, and the close
    assert errors["KeyError"] >= 1  # the snapshots


def test_an_unusable_label_past_64_bits_is_dead_lettered_whole(settings: Settings) -> None:
    s = fast(settings)
    huge = 10**400
    publish(s, [*regression(), FeatureEvent("h", N, {"x": 1.0}), LabelEvent("h", N + 0.5, huge)])
    learner = build_learner(s, [ModelSpec("r", "linreg")], use_fork=False)
    [summary] = run_to_end(learner)
    assert summary["samples_learned"] == N
    [dead] = model_error_dead_letters(s)
    assert dead.key == b"h"
    assert dead.value == b'{"id":"h","time":40.5,"label":' + str(huge).encode() + b"}"
    assert learner.stats.dead_letters["model_error"] == 1


def test_every_unusable_event_of_one_advance_is_dead_lettered(settings: Settings) -> None:
    """More than the core's default bound (10 000) of unusable features, released at once
    (they share one event time): each one is a dead letter, none is dropped."""
    s = fast(settings, consumer_batch=5000)
    n = 10_050
    publish(s, [*regression(), *(FeatureEvent(f"p{i}", N, {"x": "red"}) for i in range(n))])
    learner = build_learner(s, [ModelSpec("r", "linreg")], use_fork=False)
    [summary] = run_to_end(learner)
    assert summary["samples_learned"] == N
    dead = model_error_dead_letters(s)
    assert len(dead) == n == learner.stats.dead_letters["model_error"]
    assert {orjson.loads(r.value)["id"] for r in dead} == {f"p{i}" for i in range(n)}
    assert "model_error_dropped" not in learner.stats.dead_letters
