"""A challenger added to a stream already learning catches up from an earlier time first
(`stream.learner.backfill`), against the real Kafka and Redis: it equals River trained on the
events published since that time and then on the live ones; the champion, its checkpoint and its
versions are untouched by the backfill; the comparison covers only labels both scored."""

from __future__ import annotations

import itertools
import pickle
import time
from typing import Any, cast

import pytest
from river import evaluate, metrics
from river.base.typing import Dataset

from learners.datasets import load_dataset
from learners.specs import ModelSpec, build_estimator
from schemas.events import FeatureEvent, LabelEvent
from schemas.settings import Settings
from stream.learner.runtime import build_learner, snapshot_store
from tests.support.pipeline import fast, final_model, learn, publish

pytestmark = pytest.mark.integration

SAMPLES = list(itertools.islice(load_dataset("Phishing"), 1000))
PARTS = {"before": range(0, 300), "backfilled": range(300, 650), "live": range(650, 1000)}


def events(part: str) -> list[FeatureEvent | LabelEvent]:
    """Each sample's features at time i and its label at i + 0.5: every label is in its part."""
    out: list[FeatureEvent | LabelEvent] = []
    for i in PARTS[part]:
        x, y = SAMPLES[i]
        out += [FeatureEvent(str(i), float(i), x), LabelEvent(str(i), i + 0.5, y)]
    return out


def river(spec: str, parts: list[str]) -> tuple[Any, float]:
    """River's progressive validation (Accuracy) of ``spec`` on the samples of ``parts``."""
    model = build_estimator(spec)
    dataset = [SAMPLES[i] for part in parts for i in PARTS[part]]
    return model, evaluate.progressive_val_score(
        cast(Dataset, dataset), model, metrics.Accuracy()
    ).get()


def same(ours: Any, theirs: Any) -> bool:
    return all(ours.predict_proba_one(x) == theirs.predict_proba_one(x) for x, _ in SAMPLES[::37])


def test_a_backfilled_challenger_equals_river_and_the_champion_is_untouched(
    settings: Settings,
) -> None:
    s = fast(settings)
    assert publish(s, events("before")).failed == 0
    since = time.time() + 0.002  # record timestamps are in ms: "before" is strictly earlier
    while time.time() < since:
        pass
    assert publish(s, events("backfilled")).failed == 0
    champion = [ModelSpec("lr", "logreg")]
    learn(s, champion)
    store = snapshot_store(s)
    checkpoint = store.latest_checkpoint()
    assert checkpoint is not None
    champion_before = pickle.dumps(final_model(s, "lr").model)

    def start() -> Any:
        return build_learner(
            s, [*champion, ModelSpec("tree", "hoeffding")], compare=[("lr", "tree")],
            backfill_from=since,
        )  # fmt: skip

    # stopped before its first snapshot, the next start backfills the same (equal as models: a
    # Hoeffding tree's unseeded random state differs between two builds, not its answers)
    first = start()
    first.source.close()
    learner = start()
    for started in (first, learner):  # the challenger alone learned what was published since
        tree = started.core.models["tree"]
        river_tree, accuracy = river("hoeffding", ["backfilled"])
        assert same(tree.model, river_tree) and tree.metric_values() == {"Accuracy": accuracy}
        assert tree.samples_learned == len(PARTS["backfilled"])
    try:
        # the champion, its checkpoint and its versions: untouched
        assert pickle.dumps(learner.core.models["lr"].model) == champion_before
        assert store.latest_checkpoint() == checkpoint
        assert learner.core.comparisons[("lr", "tree")].stats.n == 0
        # then live
        assert publish(s, events("live")).failed == 0
        summaries = {item["model"]: item for item in learner.run(exit_when_idle=0.5)}
    finally:
        learner.source.close()
    river_tree, tree_accuracy = river("hoeffding", ["backfilled", "live"])
    assert same(final_model(s, "tree").model, river_tree)
    assert summaries["tree"]["metrics"] == {"Accuracy": tree_accuracy}
    assert summaries["tree"]["samples_learned"] == len(PARTS["backfilled"]) + len(PARTS["live"])
    river_lr, lr_accuracy = river("logreg", ["before", "backfilled", "live"])
    assert same(final_model(s, "lr").model, river_lr)
    assert summaries["lr"]["metrics"] == {"Accuracy": lr_accuracy}
    # the comparison: only the live labels, which both models scored
    assert learner.core.comparisons[("lr", "tree")].stats.n == len(PARTS["live"])


def test_a_run_cut_at_the_backfills_end_keeps_its_records_timestamps() -> None:
    """`_before` cuts a run at the offset where the live learner takes over; the far-future
    guard (`stream.learner.ingest`) reads the cut run's timestamps, which must be those of its
    own records (the first ``n``), read from the consumer's reader, not rebuilt record by
    record."""
    from stream.kafka.records import RecordRun
    from stream.learner.backfill import _before

    def record(i: int) -> Any:
        raise AssertionError("a whole record was built")

    run = RecordRun(
        "t", 0, [5, 6, 7, 8], [b"a", b"b", b"c", b"d"], record, lambda: [50, 60, 70, 80]
    )
    cut = _before(run, 7)
    assert cut is not None and cut.offsets == [5, 6] and cut.timestamps() == [50, 60]
    assert _before(run, 9) is run and _before(run, 5) is None
