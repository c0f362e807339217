"""The core's learning-curve marks are River's progressive-validation checkpoints, exactly.

``river.evaluate.iter_progressive_val_score(..., step=K)`` yields the metric after every K-th
label; the core marks the same label counts with the same values, whatever the delays and
however the events are cut into `advance` calls (so a restart, which cuts differently, marks
the same points).
"""

from __future__ import annotations

import pickle
from collections.abc import Hashable, Iterable
from typing import Any, cast

import pytest
from river import evaluate

from learners.core import LearningCore
from learners.datasets import dataset_events, load_dataset, river_delay
from learners.specs import ModelSpec, build_metric
from tests.support.replay import feed_in_order, feed_partitioned

LIMIT = 600
SEED = 5


def river_checkpoints(
    preset: str, metric: str, delay: str | int, step: int
) -> list[tuple[int, float]]:
    """``(label count, metric value)`` at River's own checkpoints every ``step`` labels."""
    spec = ModelSpec("m", preset, (metric,))
    steps = evaluate.iter_progressive_val_score(
        cast(
            Iterable[tuple[dict[Hashable, Any], Any]],
            load_dataset("Phishing", limit=LIMIT, seed=SEED),
        ),
        spec.build(),
        build_metric(metric),
        delay=river_delay(delay, SEED),
        step=step,
    )
    return [(int(s["Step"]), s[metric].get()) for s in steps]


@pytest.mark.parametrize("delay", [0, 25, "random:0-60"], ids=str)
@pytest.mark.parametrize(
    "feed",
    [
        lambda core, events: feed_in_order(core, events, batch=1),
        lambda core, events: feed_in_order(core, events, batch=113),
        lambda core, events: feed_partitioned(core, events, partitions=3, seed=2),
    ],
    ids=["one-by-one", "big-batches", "3-partitions"],
)
def test_marks_equal_river_checkpoints(delay: str | int, feed) -> None:
    step = 37
    core = LearningCore([ModelSpec("m", "logreg", ("Accuracy",))])
    core.trace_every = step
    feed(core, dataset_events("Phishing", label_delay=delay, limit=LIMIT, seed=SEED))
    marks = core.drain_marks()
    expected = river_checkpoints("logreg", "Accuracy", delay, step)
    # River also yields a last checkpoint at the end when it is not a multiple of the step
    expected = [(n, v) for n, v in expected if n % step == 0]
    assert [(m.labels, m.models["m"][1]["Accuracy"]) for m in marks] == expected
    assert len(marks) == LIMIT // step
    assert all(m.models["m"][0] == m.labels for m in marks)  # one sample learned per label
    assert core.drain_marks() == []  # drained


def test_two_models_marked_together_and_a_restart_marks_the_same_points() -> None:
    specs = [ModelSpec("lr", "logreg", ("Accuracy",)), ModelSpec("tree", "hoeffding", ())]
    events = list(dataset_events("Phishing", label_delay=10, limit=LIMIT, seed=SEED))

    whole = LearningCore(specs)
    whole.trace_every = 50
    feed_in_order(whole, events, batch=31)
    expected = whole.drain_marks()
    assert [m.labels for m in expected] == list(range(50, LIMIT + 1, 50))
    assert all(set(m.models) == {"lr", "tree"} for m in expected)

    # cut in two: marks drained before a "checkpoint" (pickle), the rest after the restore
    first = LearningCore(specs)
    first.trace_every = 50
    half = len(events) // 2
    feed_in_order(first, events[:half], batch=31)
    before = first.drain_marks()
    restored: LearningCore = pickle.loads(pickle.dumps(first))
    feed_in_order(restored, events[half:], batch=7)
    after = restored.drain_marks()
    assert before + after == expected


def test_no_marks_by_default() -> None:
    core = LearningCore([ModelSpec("m", "logreg", ("Accuracy",))])
    feed_in_order(core, dataset_events("Phishing", limit=100, seed=SEED), batch=10)
    assert core.drain_marks() == []
