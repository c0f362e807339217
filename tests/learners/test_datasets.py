"""Dataset replay: event order, delays and the matching River delay."""

from __future__ import annotations

from typing import cast

import pytest

from learners.datasets import (
    DatasetError,
    RandomDelay,
    dataset_events,
    load_dataset,
    parse_label_delay,
    river_delay,
)
from schemas.events import FeatureEvent, LabelEvent


@pytest.mark.parametrize("delay", [0, 3, "random:0-20", "random:5-5"], ids=str)
def test_events_come_in_global_event_time_order(delay):
    events = list(dataset_events("Bananas", label_delay=delay, limit=300, seed=2))
    features = [e for e in events if isinstance(e, FeatureEvent)]
    labels = [e for e in events if isinstance(e, LabelEvent)]
    assert [f.id for f in features] == [str(i) for i in range(300)]
    assert sorted(label.id for label in labels) == sorted(f.id for f in features)
    position = {(type(e), e.id): n for n, e in enumerate(events)}
    for n in range(1, len(events)):
        before, after = events[n - 1], events[n]
        assert before.time <= after.time
        if before.time == after.time and isinstance(before, FeatureEvent):
            assert (
                isinstance(after, FeatureEvent)
                or after.id == before.id
                or (position[(FeatureEvent, after.id)] < n)
            )
    low, high = (
        (delay, delay)
        if isinstance(delay, int)
        else cast(tuple[int, int], parse_label_delay(delay))
    )
    for label in labels:
        assert position[(FeatureEvent, label.id)] < position[(LabelEvent, label.id)]
        assert low <= label.time - int(label.id) <= high
    same_time = [(e.time, int(e.id)) for e in labels]
    assert same_time == sorted(same_time)


def test_delay_zero_puts_each_label_right_after_its_feature():
    kinds = [(type(e).__name__, e.id) for e in dataset_events("Phishing", limit=3)]
    assert kinds == [
        ("FeatureEvent", "0"), ("LabelEvent", "0"),
        ("FeatureEvent", "1"), ("LabelEvent", "1"),
        ("FeatureEvent", "2"), ("LabelEvent", "2"),
    ]  # fmt: skip


def test_random_delays_are_those_river_would_draw():
    events = dataset_events("Phishing", label_delay="random:0-80", limit=200, seed=9)
    delays = {int(e.id): e.time - int(e.id) for e in events if isinstance(e, LabelEvent)}
    river = cast(RandomDelay, river_delay("random:0-80", seed=9))
    assert [delays[i] for i in range(200)] == [river({}, None) for _ in range(200)]
    assert all(0 <= d <= 80 for d in delays.values())


def test_synthetic_datasets_follow_the_seed():
    first = list(dataset_events("synth.Agrawal", limit=20, seed=4))
    again = list(dataset_events("synth.Agrawal", limit=20, seed=4))
    other = list(dataset_events("synth.Agrawal", limit=20, seed=5))
    assert first == again != other
    assert len(list(load_dataset("synth.Hyperplane", limit=7, seed=1))) == 7


@pytest.mark.parametrize("name", ["Nope", "synth.Nope", "base", "CreditCard", "synth.__init__"])
def test_unknown_or_remote_datasets_are_refused(name):
    with pytest.raises(DatasetError):
        load_dataset(name)


@pytest.mark.parametrize(
    ("text", "parsed"), [(0, 0), ("12", 12), (" 7 ", 7), ("random:0-80", (0, 80))]
)
def test_parse_label_delay(text, parsed):
    assert parse_label_delay(text) == parsed


@pytest.mark.parametrize("text", [-1, "-1", "1.5", "random:", "random:3", "random:5-2", "rand:1-2"])
def test_parse_label_delay_rejects(text):
    with pytest.raises(DatasetError, match="invalid label delay"):
        parse_label_delay(text)


def test_random_delay_is_a_river_delay_callable():
    delay = RandomDelay(1, 1, seed=None)
    assert delay({"x": 1}, True) == 1
