"""A graph's shadows compared with its primary answer, per graph version (`learners.served`):
after a promotion swaps primary and shadow, the new version's evidence has the opposite sign
and must not be pooled with the old one's."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from river import metrics

from learners.comparisons import ModelComparison, Pair
from learners.served import score_shadows, shadow_target
from schemas.events import Served, ShadowAnswer

BRANCH = "root.shadow.shadows[0]"


def serve(
    version: int,
    right_primary: float,
    right_shadow: float,
    scores: dict[tuple[str, int], Any],
    pairs: dict[Pair, ModelComparison],
    rng: random.Random,
) -> None:
    for _ in range(2000):
        y = rng.random() < 0.5
        u = rng.random()
        primary = y if u < right_primary else not y
        shadow = y if u < right_shadow else not y
        served = Served("fraud", version, primary, None, {"x": 1}, {BRANCH: ShadowAnswer(shadow)})
        score_shadows(served, y, metrics.Accuracy, "classifier", scores, pairs)


def test_a_promotion_that_swaps_primary_and_shadow_starts_a_new_comparison() -> None:
    rng = random.Random(0)
    scores: dict[tuple[str, int], Any] = {}
    pairs: dict[Pair, ModelComparison] = {}
    serve(3, 0.70, 0.80, scores, pairs, rng)  # v3: tree serves, hat (better) is shadowed
    serve(9, 0.80, 0.70, scores, pairs, rng)  # v9: promoted, hat serves, tree is shadowed

    # no comparison pools the two versions' evidence, of opposite signs
    assert [comparison.stats.n for comparison in pairs.values()] == [2000, 2000]
    before, after = ("fraud@v3", f"fraud@v3@{BRANCH}"), ("fraud@v9", f"fraud@v9@{BRANCH}")
    assert sorted(pairs) == [before, after]
    for pair, comparison in pairs.items():
        assert (comparison.champion, comparison.challenger) == pair
    assert pairs[before].stats.decision() == "b_better"  # the shadow (hat) was better at v3
    assert pairs[after].stats.decision() == "a_better"  # the primary (hat) is better at v9
    assert pairs[before].stats.loss_a > pairs[before].stats.loss_b
    assert pairs[after].stats.loss_a < pairs[after].stats.loss_b
    target = shadow_target("fraud", BRANCH)
    assert sorted(scores) == [(target, 3), (target, 9)]  # the served metrics were per version


def test_the_unversioned_comparison_of_an_older_checkpoint_is_dropped() -> None:
    legacy = ("fraud", shadow_target("fraud", BRANCH))
    old = ModelComparison.fresh(*legacy, "classifier")
    old.a, old.b = 0, 1
    scores: dict[tuple[str, int], Any] = {}
    pairs: dict[Pair, ModelComparison] = {legacy: old}
    serve(4, 0.8, 0.8, scores, pairs, random.Random(1))
    assert list(pairs) == [("fraud@v4", f"fraud@v4@{BRANCH}")]


def test_integer_class_labels_read_their_json_probabilities_as_booleans_do() -> None:
    """The API's probabilities are JSON: keys ``"0"``/``"1"`` for integer classes, mapped back
    to the labels as ``"true"``/``"false"`` are for booleans (they were left strings: the
    served LogLoss of right answers was that of a probability 0 for the true class)."""
    from learners.served import update_metric

    values = []
    for positive, negative in ((True, False), (1, 0)):
        metric = metrics.LogLoss()
        for i in range(100):
            y, other = (positive, negative) if i % 2 else (negative, positive)
            proba = {str(y).lower(): 0.9, str(other).lower(): 0.1}
            update_metric(metric, y, y, proba)
        values.append(metric.get())
    assert values[0] == values[1] == pytest.approx(-math.log(0.9))
