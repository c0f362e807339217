"""Where an event no model could use was read: `learners.core.Unusable` carries its partition
and offset (from the join, `EventTimeJoin.released_at`) for its dead letter, and checkpoints
written before it did still load."""

from __future__ import annotations

import pickle
from typing import Any, cast

from learners.core import LearningCore, Unusable
from learners.specs import ModelSpec
from schemas.events import FeatureEvent, LabelEvent


def core() -> LearningCore:
    return LearningCore([ModelSpec("r", "linreg")])


def where(found: list[Unusable]) -> list[tuple[str, str, int | None, int | None]]:
    return [(u.kind, u.id, u.partition, u.offset) for u in found]


def trained(c: LearningCore) -> LearningCore:
    """``c`` after a few samples (an untrained scaler and linear model take anything)."""
    for i in range(5):
        c.push_feature(FeatureEvent(f"t{i}", i - 10.0, {"x": float(i)}), (0, 0), i)
        c.push_label(LabelEvent(f"t{i}", i - 9.5, 2.0 * i), (1, 0), i)
    return c


def test_an_unusable_feature_and_label_carry_their_partition_and_offset() -> None:
    c = trained(core())
    c.push_features(
        [FeatureEvent("red", 2.0, {"x": "red"}), FeatureEvent("c", 3.0, {"x": 1.0})], (0, 2), [41, 42]
    )  # fmt: skip
    c.push_labels([LabelEvent("c", 3.5, "oops")], (1, 1), [8])
    c.flush()
    assert where(c.drain_unusable()) == [("feature", "red", 2, 41), ("label", "c", 1, 8)]


def test_each_label_of_a_group_at_one_time_carries_its_own_offset() -> None:
    """Labels of one event time are joined in the order of their features, not of their
    offsets: each keeps its own."""
    c = core()
    c.push_features(
        [FeatureEvent("b", 1.0, {"x": 1.0}), FeatureEvent("a", 2.0, {"x": 1.0})], (0, 0), [0, 1]
    )  # fmt: skip
    c.push_labels([LabelEvent("a", 5.0, "no"), LabelEvent("b", 5.0, "nope")], (1, 0), [6, 7])
    c.flush()
    assert where(c.drain_unusable()) == [("label", "b", 0, 7), ("label", "a", 0, 6)]


def test_a_label_that_waited_for_its_feature_carries_its_place() -> None:
    c = core()
    c.push_label(LabelEvent("a", 0.5, "oops"), (1, 0), 3)  # before its feature: an orphan
    c.push_feature(FeatureEvent("a", 1.0, {"x": 1.0}), (0, 0), 9)
    c.flush()
    assert where(c.drain_unusable()) == [("label", "a", 0, 3)]


def test_an_orphan_label_of_a_checkpoint_of_before_joins_with_no_known_place() -> None:
    """A core pickled while orphan labels were kept as events (not their buffer entries):
    it loads, the orphan expires by its time and joins its feature, its place unknown."""
    c = core()
    c.push_label(LabelEvent("a", 0.5, "oops"), (1, 0), 3)
    c.push_label(LabelEvent("old", 0.25, 1.0), (1, 0), 4)
    c.advance(0.75)
    join = c._join
    entries = join._orphans
    try:  # as the join kept them before
        join._orphans = {k: entry[5] for k, entry in entries.items()}
        blob = pickle.dumps(c)
    finally:
        join._orphans = entries
    restored = pickle.loads(blob)
    assert restored.counters.pending_labels == 2
    restored._join.ttl = 0.6  # "old" (0.25) expires at the feature's time, "a" (0.5) not
    restored.push_feature(FeatureEvent("a", 1.0, {"x": 1.0}), (0, 0), 9)
    restored.flush()
    assert where(restored.drain_unusable()) == [("label", "a", None, None)]
    assert restored.counters.orphan_labels == 1 and restored.counters.labels_joined == 1


def test_a_checkpoint_holding_unusable_events_of_before_still_loads() -> None:
    """A core pickled with an undrained `Unusable` of six fields (before partition and
    offset): it loads, the two are None, and its dead letter can be written."""
    c = trained(core())
    c.push_feature(FeatureEvent("red", 1.0, {"x": "red"}), (0, 0), 5)
    c.advance(2.0)
    assert where(c.unusable) == [("feature", "red", 0, 5)]
    getstate = Unusable.__getstate__
    try:  # pickled as the class before did: the first six fields
        Unusable.__getstate__ = lambda self: cast(list[Any], getstate(self))[:6]  # type: ignore[method-assign]
        blob = pickle.dumps(c)
    finally:
        Unusable.__getstate__ = getstate  # type: ignore[method-assign]
    restored = pickle.loads(blob)
    [old] = restored.drain_unusable()
    assert (old.id, old.partition, old.offset) == ("red", None, None)
    assert old.to_event() == {"id": "red", "time": 1.0, "features": {"x": "red"}}
    assert pickle.loads(pickle.dumps(restored))._join.released_at() is None
