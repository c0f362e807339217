"""`learners.trees`: a served Hoeffding tree answers what River answers, bit for bit (``repr``
of every probability), and raises what River raises, for majority-class, naive Bayes and
adaptive leaves, numeric and nominal splits, missing features and unseen categories; anything
it cannot reproduce is left to River."""

from __future__ import annotations

import math
import random
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from river import forest, proba, tree

from learners.predictor import ServedModel
from learners.trees import compile_tree

NUMERIC = ["a", "b", "c", "d"]
CATEGORIES = ["red", "green", "blue"]

query_value = st.one_of(
    st.floats(),  # with NaN, infinities and the largest floats
    st.integers(-(10**400), 10**400),  # beyond a float: an OverflowError
    st.booleans(),
    st.sampled_from([*CATEGORIES, "violet"]),  # a category, or one never seen
    st.text(max_size=2),
)
queries = st.dictionaries(st.sampled_from([*NUMERIC, "k", "unseen"]), query_value, max_size=6)


def leaf_kinds(fast: Any) -> dict[str, int]:
    """How the compiled walk answers at its leaves: ``_Fixed`` (precomputed), ``_Bayes``
    (compiled naive Bayes) or ``_RiverLeaf``; and ``tuple``, the inlined numeric splits."""
    cells = dict(zip(fast.__code__.co_freevars, fast.__closure__ or (), strict=True))
    counts: dict[str, int] = {}
    todo = [cells["walk"].cell_contents]
    while todo:
        node = todo.pop()
        kind = type(node).__name__
        counts[kind] = counts.get(kind, 0) + 1
        if isinstance(node, tuple):
            todo += node[2:4]
        elif hasattr(node, "children"):
            todo += node.children.values()
    return counts


def outcome(predict: Any, x: dict[str, Any]) -> tuple[Any, ...]:
    try:
        return ("answer", repr(predict(x)))
    except Exception as exc:  # the same error, type and message, is part of the contract
        return ("raised", type(exc), str(exc))


def answers_as_river(model: Any, kind: str, x: dict[str, Any]) -> None:
    """The compiled answer is River's (``predict_proba_one`` of a classifier, ``predict_one``
    of a regressor), and so is the served one (prediction and probabilities), or the error."""
    fast = compile_tree(model)
    assert fast is not None
    river = model.predict_proba_one if kind == "classifier" else model.predict_one
    assert outcome(fast, x) == outcome(river, x)
    served = ServedModel.build("m", model, version=1, kind=kind)
    assert served.tree is not None
    assert outcome(served.predict, x) == outcome(replace(served, tree=None).predict, x)


def rows(rng: random.Random, n: int, classes: int, nominal: bool) -> list[tuple[dict, Any]]:
    """Rows whose class follows ``a``, ``b`` (and ``k``), so that a tree splits, with features
    missing at random and, with ``nominal``, a categorical feature ``k``."""
    out = []
    for _ in range(n):
        x: dict[str, Any] = {
            k: rng.gauss(0, 3) if rng.random() < 0.8 else rng.randint(-3, 3)
            for k in NUMERIC
            if rng.random() < 0.9
        }
        if nominal:
            x["k"] = rng.choice(CATEGORIES)
        score = x.get("a", 0) + 0.5 * x.get("b", 0) + (4 if x.get("k") == "red" else 0)
        y: Any = (
            score > 0 if classes == 2 else ["low", "mid", "high"][int(score > -1) + int(score > 2)]
        )
        out.append((x, y))
    return out


def grown(seed: int, leaf: str, classes: int, nominal: bool, nb_threshold: int) -> Any:
    """A tree grown on up to 600 `rows`."""
    rng = random.Random(seed)
    model = tree.HoeffdingTreeClassifier(
        grace_period=rng.choice([10, 30, 60]), leaf_prediction=leaf, nb_threshold=nb_threshold,
        delta=0.01,
    )  # fmt: skip
    for x, y in rows(rng, rng.randint(0, 600), classes, nominal):
        model.learn_one(x, y)
    return model


def grown_regressor(seed: int, leaf: str, nominal: bool) -> Any:
    """A regression tree grown on `rows`, its target a number that follows them."""
    rng = random.Random(seed)
    model = tree.HoeffdingTreeRegressor(grace_period=rng.choice([20, 50]), leaf_prediction=leaf)
    for x, y in rows(rng, rng.randint(300, 600), 2, nominal):
        model.learn_one(x, x.get("a", 0.0) * 2 + (3.0 if y else -1.0))
    return model


@settings(max_examples=250, deadline=None)
@given(
    seed=st.integers(0, 10**6),
    leaf=st.sampled_from(["mc", "nb", "nba"]),
    classes=st.sampled_from([2, 3]),
    nominal=st.booleans(),
    nb_threshold=st.sampled_from([0, 40]),
    x=queries,
)
def test_answers_river_s_numbers_bit_for_bit(
    seed: int, leaf: str, classes: int, nominal: bool, nb_threshold: int, x: dict
) -> None:
    answers_as_river(grown(seed, leaf, classes, nominal, nb_threshold), "classifier", x)


def test_every_leaf_kind_is_compiled_on_a_grown_tree() -> None:
    """The property above is about the fast paths: on trees like its own, the leaves are the
    precomputed or compiled ones, and the walk goes through branches. (A naive Bayes leaf that
    observes a nominal feature is answered by River's own code.)"""
    for leaf, nominal in (("mc", True), ("nb", False), ("nba", False)):
        model = grown(3, leaf, 3, nominal=nominal, nb_threshold=0)
        assert model.height > 1, leaf
        fast = compile_tree(model)
        assert fast is not None
        kinds = leaf_kinds(fast)
        assert kinds.get("_Fixed", 0) + kinds.get("_Bayes", 0) == model.n_leaves, (leaf, kinds)
        assert ("_Bayes" in kinds) == (leaf != "mc"), (leaf, kinds)
        splits = kinds.get("tuple", 0) + kinds.get("_RiverBranch", 0)
        assert splits == model.n_branches, (leaf, kinds)  # numeric ones inlined
    # and a split on the nominal feature is walked by River's own `next`
    assert "_RiverBranch" in leaf_kinds(compile_tree(grown(1, "mc", 3, True, nb_threshold=0)))


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10**6),
    leaf=st.sampled_from(["mc", "nba"]),
    nominal=st.booleans(),
    weighted=st.booleans(),
    x=queries,
)
def test_a_forest_answers_river_s_numbers_bit_for_bit(
    seed: int, leaf: str, nominal: bool, weighted: bool, x: dict
) -> None:
    """An adaptive random forest: its members' answers weighted by their metrics and added up
    as River does (or not weighted), the errors of River's own path."""
    model = forest.ARFClassifier(
        n_models=3, seed=seed, leaf_prediction=leaf, grace_period=20,
        disable_weighted_vote=not weighted,
    )  # fmt: skip
    for row, y in rows(random.Random(seed), 400, 3, nominal):
        model.learn_one(row, y)
    answers_as_river(model, "classifier", x)


@settings(max_examples=120, deadline=None)
@given(
    seed=st.integers(0, 10**6),
    leaf=st.sampled_from(["mean", "model", "adaptive"]),
    nominal=st.booleans(),
    x=queries,
)
def test_a_regression_tree_answers_river_s_numbers_bit_for_bit(
    seed: int, leaf: str, nominal: bool, x: dict
) -> None:
    """`HoeffdingTreeRegressor.predict_one`: mean leaves read once, model leaves River's (a
    leaf's linear model learns numbers only: the nominal feature with mean leaves alone)."""
    answers_as_river(grown_regressor(seed, leaf, nominal and leaf == "mean"), "regressor", x)


def test_a_regression_tree_reads_its_mean_leaves_once() -> None:
    for leaf, fixed in (("mean", True), ("model", False)):
        model = grown_regressor(4, leaf, nominal=False)
        assert model.height > 1
        kinds = leaf_kinds(compile_tree(model))
        assert ("_Fixed" in kinds, "_RiverLeaf" in kinds) == (fixed, not fixed), (leaf, kinds)


@pytest.mark.parametrize(
    "estimator",
    [
        forest.ARFClassifier(),  # not started: its first prediction starts it (River's to do)
        tree.HoeffdingAdaptiveTreeClassifier(),
        tree.ExtremelyFastDecisionTreeClassifier(),
        tree.HoeffdingAdaptiveTreeRegressor(),
    ],
    ids=["empty forest", "adaptive", "extremely fast", "adaptive regressor"],
)
def test_other_trees_are_left_to_river(estimator: Any) -> None:
    assert compile_tree(estimator) is None


def test_a_subclass_is_left_to_river() -> None:
    class Mine(tree.HoeffdingTreeClassifier):
        pass

    assert compile_tree(Mine()) is None


def test_an_untrained_tree_answers_as_river() -> None:
    model = tree.HoeffdingTreeClassifier()
    fast = compile_tree(model)
    assert fast is not None and fast({"a": 1.0}) == model.predict_proba_one({"a": 1.0}) == {}
    regressor = tree.HoeffdingTreeRegressor()
    fast = compile_tree(regressor)
    assert fast is not None
    assert repr(fast({"a": 1.0})) == repr(regressor.predict_one({"a": 1.0})) == "0.0"


def test_a_river_that_computes_otherwise_is_answered_by_river(monkeypatch: Any) -> None:
    """The probe of each naive Bayes leaf: were River's Gaussian to compute its log density
    otherwise (a release changing it), the leaves are answered by River's own code, so the
    answers are still River's."""
    model = grown(5, "nb", 2, nominal=False, nb_threshold=0)
    assert compile_tree(model) is not None
    original = proba.Gaussian.log_pdf

    def shifted(self: Any, x: Any) -> float:
        return original(self, x) + 1e-3

    monkeypatch.setattr(proba.Gaussian, "log_pdf", shifted)
    fast = compile_tree(model)
    assert fast is not None
    assert "_Bayes" not in leaf_kinds(fast) and "_RiverLeaf" in leaf_kinds(fast)
    for x in ({"a": 0.5, "b": -1.0}, {"a": -2.0, "c": 4.0}):
        assert repr(fast(x)) == repr(model.predict_proba_one(x))


def test_the_served_model_answers_through_it() -> None:
    model = grown(7, "nba", 2, nominal=True, nb_threshold=0)
    served = ServedModel.build("t", model, version=1, kind="classifier")
    assert served.tree is not None
    x = {"a": 1.0, "b": -0.5, "k": "red"}
    answer = model.predict_proba_one(x)
    assert served.predict(x) == (max(answer, key=answer.__getitem__), answer)
    # each request gets its own dict: changing one answer changes no later one
    first = served.predict({"a": 9.0})[1]
    assert first is not None
    first.clear()
    assert served.predict({"a": 9.0})[1] == model.predict_proba_one({"a": 9.0})


@pytest.mark.parametrize("leaf", ["nb", "nba"])
def test_a_density_that_is_not_a_number_adds_nothing_as_in_river(leaf: str) -> None:
    """An infinite or NaN feature gives a log density of -inf or NaN, which River leaves out
    of the class's vote (it adds only what is > -inf)."""
    model = grown(11, leaf, 3, nominal=False, nb_threshold=0)
    fast = compile_tree(model)
    assert fast is not None
    inf, nan = float("inf"), float("nan")
    for x in ({"a": nan}, {"c": inf}, {"a": 0.3, "d": -inf}, {"b": nan, "c": 1.0, "d": inf}):
        assert repr(fast(x)) == repr(model.predict_proba_one(x)), x


def test_past_the_cap_the_leaves_are_answered_by_river(monkeypatch: Any) -> None:
    model = grown(5, "nb", 3, nominal=False, nb_threshold=0)
    monkeypatch.setattr("learners.trees.MAX_TERMS", 0)
    fast = compile_tree(model)
    assert fast is not None
    assert "_Bayes" not in leaf_kinds(fast) and "_RiverLeaf" in leaf_kinds(fast)
    x = {"a": 0.5, "b": -1.0}
    assert repr(fast(x)) == repr(model.predict_proba_one(x))


def test_a_value_on_a_threshold_goes_where_river_sends_it() -> None:
    """Each numeric split queried at its threshold, just under and just over it (the inlined
    comparison must be River's ``<=``)."""
    model = grown(3, "mc", 3, nominal=False, nb_threshold=0)
    fast = compile_tree(model)
    assert fast is not None and leaf_kinds(fast)["tuple"] > 2
    for branch in model._root.iter_branches():
        t = branch.threshold
        for value in (t, math.nextafter(t, -math.inf), math.nextafter(t, math.inf)):
            x = {"a": 0.1, "b": -0.2, "c": 0.3, "d": 0.0, branch.feature: value}
            assert repr(fast(x)) == repr(model.predict_proba_one(x)), (branch.feature, value)


def test_a_forest_weighs_only_members_with_a_positive_metric_and_may_answer_a_counter() -> None:
    """River's two corners: a member whose metric is 0 votes unweighted, and a forest whose
    members say nothing answers an empty `collections.Counter`."""
    model = forest.ARFClassifier(n_models=3, seed=2, grace_period=20)
    for x, y in rows(random.Random(2), 300, 2, nominal=False):
        model.learn_one(x, y)
    model._metrics[0] = model.metric.clone()  # nothing scored yet: 0.0
    fast = compile_tree(model)
    assert fast is not None
    for x in ({"a": 1.0, "b": -2.0}, {"c": 0.5}, {}):
        assert repr(fast(x)) == repr(model.predict_proba_one(x))
    silent = forest.ARFClassifier(n_models=3, seed=2)
    assert repr(silent.predict_proba_one({"a": 1.0})) == "Counter()"  # starts its members
    fast = compile_tree(silent)
    assert fast is not None
    assert repr(fast({"a": 1.0})) == repr(silent.predict_proba_one({"a": 1.0})) == "Counter()"
