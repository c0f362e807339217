"""The learner's observer exports the served metrics and shadow comparisons the core keeps,
and removes the series of those it dropped (`learners.served.VERSIONS_KEPT`): the series of
``riverstream_served_metric`` grew with every version a long-running learner served."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from learners.core import LearningCore
from learners.served import VERSIONS_KEPT
from learners.specs import ModelSpec
from stream.learner.observer import PrometheusObserver
from stream.learner.telemetry import LearnerMetrics
from tests.support.metrics import View, push_served


def series(metrics: LearnerMetrics, name: str, *labels: str) -> set[tuple[str, ...]]:
    return {
        tuple(sample.labels[label] for label in labels)
        for family in metrics.registry.collect()
        for sample in family.samples
        if sample.name == name
    }


def test_the_series_of_dropped_versions_are_removed() -> None:
    core = LearningCore([ModelSpec("lr", "logreg", ("Accuracy",))])
    metrics = LearnerMetrics(CollectorRegistry())
    observer = PrometheusObserver(metrics)
    view: Any = View(core)
    for first in range(1, 201, 10):  # a refresh every 10 versions
        push_served(core, range(first, first + 10))
        observer.after_batch(view, [])
        served = series(metrics, "riverstream_served_metric", "model", "version")
        assert served == {(model, str(v)) for model, v in core.served_metrics}
        compared = series(metrics, "riverstream_comparison_labels", "model", "challenger")
        assert compared == set(core.served_comparisons)
        for name in ("riverstream_comparison_decision", "riverstream_comparison_difference"):
            assert series(metrics, name, "model", "challenger") == compared
    assert len(served) == 3 * VERSIONS_KEPT  # lr, g and its shadow: not 3 * 200
    assert len(compared) == VERSIONS_KEPT
    get = metrics.registry.get_sample_value
    for (model, version), values in core.served_metric_values().items():
        labels = {"model": model, "version": str(version), "metric": "Accuracy"}
        assert get("riverstream_served_metric", labels) == values["Accuracy"]
