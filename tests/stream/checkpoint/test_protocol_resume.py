"""Pickling the core mid-stream and continuing from the copy changes nothing."""

from __future__ import annotations

import pickle
import random

import pytest

from learners.core import LearningCore
from learners.datasets import dataset_events
from learners.specs import ModelSpec
from learners.watermark import Watermark
from schemas.events import FeatureEvent
from stream.checkpoint.protocol import kept_indexes, resume_positions
from tests.support.replay import feed_in_order, partition_of, sample_inputs

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


class _PartitionedLearner:
    """The stream adapter's loop in miniature: partitions of both topics read interleaved at
    random, a min-of-max watermark, and checkpoints that leave buffered events out (they are
    read again from the resume offsets, as the learner does after a restart)."""

    def __init__(self, events: list, partitions: int, seed: int) -> None:
        self.logs: dict[tuple[int, int], list] = {
            (topic, p): [] for topic in (0, 1) for p in range(partitions)
        }
        for event in events:
            topic = 0 if isinstance(event, FeatureEvent) else 1
            self.logs[(topic, partition_of(event.id, partitions))].append(event)
        self.core = LearningCore(SPECS)
        self.watermark = Watermark(self.logs)
        self.position = dict.fromkeys(self.logs, 0)
        self.skip: dict[str, list[tuple[int, int]]] = {}
        self.rng = random.Random(seed)

    def read(self, n: int) -> None:
        for _ in range(n):
            live = [s for s, log in self.logs.items() if self.position[s] < len(log)]
            if not live:
                return
            source = self.rng.choice(live)
            offset = self.position[source]
            self.position[source] += 1
            ranges = self.skip.get(str(source), [])
            if kept_indexes([offset], ranges):
                event = self.logs[source][offset]
                push = self.core.push_feature if source[0] == 0 else self.core.push_label
                push(event, source, offset)
                self.watermark.observe(source, event.time)
            if self.position[source] == len(self.logs[source]):
                self.watermark.mark_idle(source, True)
            value = self.watermark.value()
            if value is not None:
                self.core.advance(value)
            elif all(self.position[s] == len(log) for s, log in self.logs.items()):
                self.core.flush()  # every partition idle: the learner flushes

    def crash_and_restore(self) -> None:
        with self.core.processed_only() as unprocessed:
            consumed = {str(s): p for s, p in self.position.items()}
            buffered = {str(s): found.offsets for s, found in unprocessed.items()}
            resume, skip = resume_positions(consumed, buffered, self.skip)
            watermark = self.watermark.rewound({s: f.earliest for s, f in unprocessed.items()})
            blob = pickle.dumps((self.core, watermark), protocol=pickle.HIGHEST_PROTOCOL)
        self.core, self.watermark = pickle.loads(blob)
        self.position = {s: resume[str(s)] for s in self.logs}
        self.skip = skip

    def finish(self) -> LearningCore:
        self.read(10**9)
        self.core.flush()
        return self.core


@pytest.mark.parametrize("seed", range(6))
def test_checkpoints_without_buffered_events_resume_exactly(seed):
    """A checkpoint holds only processed events; the buffered ones are read again from each
    partition's resume offset. Crashing at random moments changes nothing."""
    events = _events()
    straight = LearningCore(SPECS)
    feed_in_order(straight, events, batch=10)

    learner = _PartitionedLearner(events, partitions=3, seed=seed)
    rng = random.Random(seed)
    restores = 0
    while any(learner.position[s] < len(log) for s, log in learner.logs.items()):
        learner.read(rng.randint(1, 150))
        learner.crash_and_restore()
        restores += 1
    assert restores >= 3
    assert _outcome(learner.finish())[:3] == _outcome(straight)[:3]
