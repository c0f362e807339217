"""The learner's observer exports each champion/challenger comparison of the core as the
``riverstream_comparison_*`` gauges, equal to the comparison's own summary."""

from __future__ import annotations

import math
from typing import Any

from prometheus_client import CollectorRegistry

from learners.core import LearningCore
from learners.datasets import dataset_events
from learners.specs import ModelSpec
from schemas.events import FeatureEvent
from stream.learner.observer import PrometheusObserver
from stream.learner.telemetry import LearnerMetrics
from tests.support.metrics import View


def test_comparisons_are_exported_as_their_summary() -> None:
    specs = [ModelSpec("lr", "logreg"), ModelSpec("tree", "hoeffding")]
    core = LearningCore(specs, compare=[("lr", "tree"), ("tree", "lr")])
    for offset, event in enumerate(dataset_events("Phishing", label_delay=3, limit=400, seed=1)):
        if isinstance(event, FeatureEvent):
            core.push_feature(event, (0, 0), offset)
        else:
            core.push_label(event, (1, 0), offset)
    core.flush()
    metrics = LearnerMetrics(CollectorRegistry())
    observer = PrometheusObserver(metrics)
    view: Any = View(core)
    observer.after_batch(view, [])

    def get(name: str, champion: str, challenger: str) -> float | None:
        labels = {"model": champion, "challenger": challenger}
        value: float | None = metrics.registry.get_sample_value(
            f"riverstream_comparison_{name}", labels
        )
        return value

    for (champion, challenger), comparison in core.comparisons.items():
        summary = comparison.stats.summary()
        assert get("labels", champion, challenger) == summary["n"] > 300
        assert get("champion_loss", champion, challenger) == summary["loss_a"]
        assert get("challenger_loss", champion, challenger) == summary["loss_b"]
        assert get("difference", champion, challenger) == summary["difference"]
        assert get("lower", champion, challenger) == summary["lower"]
        assert get("upper", champion, challenger) == summary["upper"]
        decision = {"b_better": 1.0, "a_better": -1.0, "undecided": 0.0}[summary["decision"]]
        assert get("decision", champion, challenger) == decision
    difference = get("difference", "lr", "tree")
    assert difference is not None and math.isclose(
        difference, -(get("difference", "tree", "lr") or 0.0), abs_tol=1e-12
    )
