"""The core equals River's progressive validation exactly, however events are interleaved."""

from __future__ import annotations

import pytest

from learners.core import LearningCore
from learners.datasets import dataset_events
from learners.specs import ModelSpec
from schemas.events import FeatureEvent, LabelEvent
from tests.support.replay import (
    feed_in_order,
    feed_partitioned,
    river_reference,
    sample_inputs,
)

LIMIT = 1000
SEED = 3
DELAYS = [0, 1, 50, "random:0-80"]
CASES = [
    ("Phishing", "logreg", ("Accuracy", "ROCAUC")),
    ("TrumpApproval", "linreg", ("MAE",)),
]
FEEDS = {
    "one-by-one": lambda core, events: feed_in_order(core, events, batch=1),
    "big-batches": lambda core, events: feed_in_order(core, events, batch=97),
    "3-partitions": lambda core, events: feed_partitioned(core, events, partitions=3, seed=1),
}


def _predict(model, kind_is_classifier: bool, x):
    return model.predict_proba_one(x) if kind_is_classifier else model.predict_one(x)


@pytest.mark.parametrize("feed", sorted(FEEDS))
@pytest.mark.parametrize("delay", DELAYS, ids=str)
@pytest.mark.parametrize(("dataset", "preset", "metric_names"), CASES, ids=lambda c: str(c))
def test_final_metrics_and_model_equal_river(dataset, preset, metric_names, delay, feed):
    spec = ModelSpec("m", preset, metric_names)
    core = LearningCore([spec])
    FEEDS[feed](core, dataset_events(dataset, label_delay=delay, limit=LIMIT, seed=SEED))

    values = core.metric_values("m")
    state = core.models["m"]
    assert state.samples_learned == LIMIT
    assert core.counters.labels_joined == LIMIT
    assert core.counters.pending_features == core.counters.pending_labels == 0
    for metric in metric_names:
        expected, river_model = river_reference(
            dataset, spec, metric, delay, limit=LIMIT, seed=SEED
        )
        assert values[metric] == expected, metric
        classifier = state.kind == "classifier"
        for x in sample_inputs(dataset):
            assert _predict(state.model, classifier, x) == _predict(river_model, classifier, x)


@pytest.mark.parametrize("delay", [0, "random:0-80"], ids=str)
def test_two_models_in_one_core_each_equal_river(delay):
    specs = [ModelSpec("lr", "logreg", ("ROCAUC",)), ModelSpec("tree", "hoeffding", ("Accuracy",))]
    core = LearningCore(specs)
    feed_partitioned(core, dataset_events("Phishing", label_delay=delay, limit=LIMIT, seed=SEED))
    for spec in specs:
        (metric,) = spec.metric_names
        expected, river_model = river_reference(
            "Phishing", spec, metric, delay, limit=LIMIT, seed=SEED
        )
        assert core.metric_values(spec.name) == {metric: expected}
        for x in sample_inputs("Phishing"):
            assert core.models[spec.name].model.predict_proba_one(x) == (
                river_model.predict_proba_one(x)
            )


def test_anomaly_detector_without_delay_equals_river():
    """Unsupervised models learn at feature time: the same as River when labels are not late."""
    spec = ModelSpec("hst", "halfspace", ("ROCAUC",))
    core = LearningCore([spec])
    feed_partitioned(core, dataset_events("Phishing", label_delay=0, limit=LIMIT, seed=SEED))
    expected, river_model = river_reference("Phishing", spec, "ROCAUC", 0, limit=LIMIT, seed=SEED)
    assert core.metric_values("hst") == {"ROCAUC": expected}
    for x in sample_inputs("Phishing"):
        assert core.models["hst"].model.score_one(x) == river_model.score_one(x)


def test_outcomes_name_each_model_with_its_prediction():
    core = LearningCore([ModelSpec("a", "logreg"), ModelSpec("b", "hoeffding")])
    for i in range(30):
        core.push_feature(FeatureEvent(str(i), float(i), {"x": float(i % 3)}), (0, 0), i)
        core.push_label(LabelEvent(str(i), float(i), i % 3 == 1), (1, 0), i)
    core.flush()
    drained = core.drain_outcomes()
    assert [name for name, _, _ in drained] == ["a", "b"] * 30
    assert [y for _, y, _ in drained[::2]] == [i % 3 == 1 for i in range(30)]
    assert all(prediction in (True, False, None) for _, _, prediction in drained)
    assert core.drain_outcomes() == []
