"""Champion/challenger comparisons inside the learning core, against a hand computation.

The hand computation runs the two River models itself in `river.stream.simulate_qa` order (the
order `learners.datasets.dataset_events` publishes and the core joins in): each model predicts
when the features arrive, and when the label comes each prediction is scored into a
`PairedComparison` (when both exist), then both models learn. The core must hold exactly the
same statistic (every float of its state), survive pickling (a checkpoint) mid-stream, restore
a checkpoint written before comparisons existed, and take a model added mid-stream without
changing anything for the models that were there.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Hashable
from typing import Any

import pytest
from river import stream as river_stream

from learners.compare import PairedComparison
from learners.comparisons import REGRESSION_MIN_SAMPLES, ModelComparison
from learners.core import LearningCore
from learners.datasets import dataset_events, load_dataset
from learners.specs import ModelSpec
from schemas.errors import ModelSpecError
from schemas.events import FeatureEvent, LabelEvent

Event = FeatureEvent | LabelEvent


def push_all(core: LearningCore, events: list[Event], first: int = 0, batch: int = 200) -> None:
    """Push ``events`` (offsets from ``first``) a batch at a time, advancing after each."""
    for start in range(0, len(events), batch):
        chunk = events[start : start + batch]
        for offset, event in enumerate(chunk, first + start):
            if isinstance(event, FeatureEvent):
                core.push_feature(event, (0, 0), offset)
            else:
                core.push_label(event, (1, 0), offset)
        core.advance(chunk[-1].time)


def by_hand(
    dataset: str, specs: list[ModelSpec], delay: int, limit: int, regression: bool
) -> PairedComparison:
    """The paired comparison of specs[0] with specs[1], computed with River directly."""
    a: Any = specs[0].build()
    b: Any = specs[1].build()
    comparison = (
        PairedComparison(kind="regression")
        if regression
        else PairedComparison(kind="classification")
    )
    samples: list[tuple[dict[Hashable, Any], Any]] = [
        ({str(k): v for k, v in x.items()}, y)
        for x, y in load_dataset(dataset, limit=limit, seed=1)
    ]
    predicted: dict[int, tuple[Any, Any]] = {}
    for i, x, y in river_stream.simulate_qa(samples, moment=None, delay=delay):
        if y is None:  # the question: both predict
            predicted[i] = (a.predict_one(x), b.predict_one(x))
            continue
        y_a, y_b = predicted.pop(i)
        if y_a is not None and y_b is not None:
            if regression:
                comparison.update(abs(y - y_a), abs(y - y_b))
            else:
                comparison.update_correct(y_a == y, y_b == y)
        a.learn_one(x, y)
        b.learn_one(x, y)
    return comparison


@pytest.mark.parametrize(
    ("dataset", "first", "second", "regression"),
    [
        ("Phishing", "logreg", "hoeffding", False),
        ("TrumpApproval", "linreg", "hoeffding-reg", True),
    ],
)
def test_the_core_comparison_equals_the_hand_computation(
    dataset: str, first: str, second: str, regression: bool
) -> None:
    specs = [ModelSpec("champion", first), ModelSpec("challenger", second)]
    events = list(dataset_events(dataset, label_delay=7, limit=600, seed=1))
    core = LearningCore(specs, compare=[("champion", "challenger")])
    push_all(core, events)
    core.flush()
    ours = core.comparisons[("champion", "challenger")]
    expected = by_hand(dataset, specs, delay=7, limit=600, regression=regression)
    assert ours.stats.n > 500
    assert ours.stats.to_dict() == expected.to_dict()
    assert ours.loss == ("absolute" if regression else "0/1")
    assert ours.min_samples == (REGRESSION_MIN_SAMPLES if regression else 0)
    # the models are untouched by the comparison: the same as in a core without it
    plain = LearningCore(specs)
    push_all(plain, events)
    plain.flush()
    for name in ("champion", "challenger"):
        assert core.metric_values(name) == plain.metric_values(name)


def test_a_pickled_core_continues_its_comparison_exactly() -> None:
    specs = [ModelSpec("tree", "hoeffding"), ModelSpec("lr", "logreg")]
    events = list(dataset_events("Phishing", label_delay=20, limit=800, seed=1))
    whole = LearningCore(specs, compare=[("tree", "lr"), ("lr", "tree")])
    push_all(whole, events)
    whole.flush()

    first = LearningCore(specs, compare=[("tree", "lr"), ("lr", "tree")])
    push_all(first, events[:700])
    again: LearningCore = pickle.loads(pickle.dumps(first))  # a checkpoint, mid-stream
    assert again.comparisons[("tree", "lr")].stats.n > 0
    push_all(again, events[700:], first=700)
    again.flush()
    for pair, comparison in whole.comparisons.items():
        assert again.comparisons[pair].stats.to_dict() == comparison.stats.to_dict()
    mirror, direct = whole.comparisons[("lr", "tree")], whole.comparisons[("tree", "lr")]
    assert math.isclose(mirror.stats.difference, -direct.stats.difference, abs_tol=1e-12)


def test_a_checkpoint_without_comparisons_is_restored_and_can_start_one() -> None:
    specs = [ModelSpec("a", "logreg"), ModelSpec("b", "hoeffding")]
    events = list(dataset_events("Phishing", label_delay=5, limit=400, seed=1))
    core = LearningCore(specs)
    push_all(core, events[:300])
    state = pickle.loads(pickle.dumps(core)).__dict__
    for name in ("comparisons", "_compared"):  # what a core of the previous release pickled
        del state[name]
    old = LearningCore.__new__(LearningCore)
    old.__setstate__(state)
    assert old.comparisons == {}
    push_all(old, events[300:350], first=300)  # learns on, comparing nothing
    old.set_comparisons([("a", "b")])
    before = old.counters.labels_joined
    push_all(old, events[350:], first=350)
    old.flush()
    assert old.comparisons[("a", "b")].stats.n == old.counters.labels_joined - before > 100


def test_a_model_added_mid_stream_starts_fresh_and_changes_nothing_else() -> None:
    events = list(dataset_events("Phishing", label_delay=30, limit=600, seed=1))
    uninterrupted = LearningCore([ModelSpec("tree", "hoeffding")])
    push_all(uninterrupted, events)
    uninterrupted.flush()

    core = LearningCore([ModelSpec("tree", "hoeffding")])
    push_all(core, events[:500])
    core.flush()
    pending, joined = core.counters.pending_features, core.counters.labels_joined
    assert pending > 0  # features whose labels have not come: the new model never saw them
    core = pickle.loads(pickle.dumps(core))
    core.add_models([ModelSpec("lr", "logreg")])
    core.set_comparisons([("tree", "lr")])
    push_all(core, events[500:], first=500)
    core.flush()

    tree, reference = core.models["tree"], uninterrupted.models["tree"]
    assert tree.samples_learned == reference.samples_learned
    assert tree.metric_values() == reference.metric_values()
    for x, _y in load_dataset("Phishing", limit=50, seed=2):
        assert tree.model.predict_proba_one(x) == reference.model.predict_proba_one(x)
    labels_after = core.counters.labels_joined - joined
    lr = core.models["lr"]
    assert lr.samples_learned == labels_after  # it learns the pending labels too...
    comparison = core.comparisons[("tree", "lr")]
    assert comparison.stats.n == labels_after - pending  # ...which are not compared
    with pytest.raises(ModelSpecError, match="already learning"):
        core.add_models([ModelSpec("lr", "logreg")])


def test_comparisons_are_checked_against_the_models() -> None:
    specs = [ModelSpec("c", "logreg"), ModelSpec("r", "linreg"), ModelSpec("h", "halfspace")]
    with pytest.raises(ModelSpecError, match="only models of one kind"):
        LearningCore(specs, compare=[("c", "r")])
    with pytest.raises(ModelSpecError, match="anomaly detector"):
        LearningCore(specs, compare=[("h", "c")])
    with pytest.raises(ModelSpecError, match="no model named"):
        LearningCore(specs, compare=[("c", "x")])
    more = [*specs, ModelSpec("c2", "hoeffding"), ModelSpec("r2", "hoeffding-reg")]
    assert list(LearningCore(more, compare="all").comparisons) == [("c", "c2"), ("r", "r2")]


def test_a_failed_or_missing_prediction_is_not_compared() -> None:
    comparison = ModelComparison.fresh("a", "b", "regressor")
    comparison.a, comparison.b = 0, 1
    comparison.update(1.0, [(None, None), (2.0, None)])  # a raised (FAILED)
    comparison.update(1.0, [(float("nan"), None), (2.0, None)])
    comparison.update("x", [(1.0, None), (2.0, None)])
    assert comparison.stats.n == 0
    comparison.update(1.0, [(1.5, None), (3.0, None)])
    assert (comparison.stats.n, comparison.stats.loss_a, comparison.stats.loss_b) == (1, 0.5, 2.0)
