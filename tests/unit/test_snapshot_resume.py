"""Pickling the core mid-stream and continuing from the copy changes nothing."""

from __future__ import annotations

import pickle

import pytest

from learners.core import LearningCore
from learners.datasets import dataset_events
from learners.specs import ModelSpec
from tests.unit.replay import feed_in_order, sample_inputs

SPECS = [ModelSpec("lr", "logreg", ("Accuracy", "ROCAUC")), ModelSpec("tree", "hoeffding")]


def _events():
    return list(dataset_events("Phishing", label_delay="random:0-40", limit=600, seed=5))


def _outcome(core: LearningCore):
    xs = sample_inputs("Phishing")
    return (
        {name: core.metric_values(name) for name in core.models},
        {
            name: [state.model.predict_proba_one(x) for x in xs]
            for name, state in core.models.items()
        },
        {name: state.samples_learned for name, state in core.models.items()},
        core.counters,
    )


@pytest.mark.parametrize("cut", [1, 123, 300, 599])
@pytest.mark.parametrize("advance_before_snapshot", [True, False])
def test_resume_from_pickle_gives_the_same_result(cut, advance_before_snapshot):
    events = _events()
    straight = LearningCore(SPECS)
    feed_in_order(straight, events, batch=10)

    first = LearningCore(SPECS)
    offsets = [0, 0]
    for event in events[:cut]:
        topic = 0 if type(event).__name__ == "FeatureEvent" else 1
        (first.push_feature if topic == 0 else first.push_label)(event, (topic, 0), offsets[topic])
        offsets[topic] += 1
    if advance_before_snapshot:
        first.advance(events[cut - 1].time)
    snapshot = pickle.dumps(first, protocol=pickle.HIGHEST_PROTOCOL)
    del first  # the learner crashed

    resumed: LearningCore = pickle.loads(snapshot)
    for event in events[cut:]:
        topic = 0 if type(event).__name__ == "FeatureEvent" else 1
        push = resumed.push_feature if topic == 0 else resumed.push_label
        push(event, (topic, 0), offsets[topic])
        offsets[topic] += 1
        resumed.advance(event.time)
    resumed.flush()

    assert _outcome(resumed) == _outcome(straight)
