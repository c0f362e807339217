"""The failures of the learner's Prometheus observer are exported as
``riverstream_learner_observer_errors_total``, although it is that observer which failed: the
guard hands it the live count once, and the count is read at each scrape, not by the failing
calls."""

from __future__ import annotations

import urllib.request
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from learners.core import LearningCore
from learners.specs import ModelSpec
from stream.learner.observer import PrometheusObserver
from stream.learner.observing import GuardedObserver, LearnerStats
from stream.learner.telemetry import LearnerMetrics, start_http_server
from tests.support.metrics import View


class Broken(View):
    """A learner whose timings cannot be read: every refresh of the observer raises."""

    def timings(self) -> dict[str, dict[str, list[float]]]:
        raise RuntimeError("timings")


def scraped(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        sample.labels["reason"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "riverstream_learner_observer_errors_total"
    }


def test_the_failures_of_the_observer_are_scraped_though_every_call_of_it_fails() -> None:
    metrics = LearnerMetrics(CollectorRegistry())
    stats = LearnerStats()
    guarded = GuardedObserver(PrometheusObserver(metrics), stats)
    view: Any = Broken(LearningCore([ModelSpec("lr", "logreg")]))
    server, _thread = start_http_server(0, metrics.registry, addr="127.0.0.1")
    try:
        port = server.server_port
        assert scraped(port) == {}  # the family is there, without series, until a failure
        for _ in range(3):
            guarded.after_batch(view, [])
        assert stats.observer_errors == {"RuntimeError": 3}
        assert scraped(port) == {"RuntimeError": 3.0}
    finally:
        server.shutdown()
        server.server_close()


def test_an_observer_that_does_not_report_its_failures_is_guarded_as_before() -> None:
    class Plain:
        def after_batch(self, learner: Any, records: list[Any]) -> None:
            raise ValueError("a bug")

        def snapshot(self, learner: Any, result: Any) -> None: ...

        def close(self) -> None: ...

    stats = LearnerStats()
    guarded = GuardedObserver(Plain(), stats)
    guarded.after_batch(View(LearningCore([ModelSpec("lr", "logreg")])), [])  # type: ignore[arg-type]
    assert stats.observer_errors == {"ValueError": 1}
