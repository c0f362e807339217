"""`learners.tree_learning`: a Hoeffding tree learning with its leaves' Gaussians in C leaves
River's state, to the bit (the pickled tree after every sample, each leaf's random generator
aside: River seeds those from the system), answers what River answers and raises what River
raises; anything else is left to River. With the C passes (`learners/_tree_pass.c`) and
without them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from river import tree
from river.tree.nodes.htc_nodes import LeafNaiveBayesAdaptive

from learners import tree_learning
from learners.datasets import load_dataset
from learners.model_state import ModelState
from learners.specs import ModelSpec
from learners.tree_learning import TreeLearning, compile_tree_learning, tree_state

NAMES = ["a", "b", "c", "d"]

number = st.one_of(
    st.floats(-1e6, 1e6),
    st.integers(-1000, 1000),
    st.just(-0.0),
)
odd = st.one_of(
    number,
    st.floats(),  # NaN, infinities, the largest floats: River's own arithmetic
    st.integers(-(10**400), 10**400),  # beyond a float: River's OverflowError
    st.booleans(),
    st.text(max_size=1),  # a nominal feature (or a TypeError in a numeric split)
)
samples = st.lists(
    st.tuples(st.dictionaries(st.sampled_from(NAMES), number, max_size=4), st.booleans()),
    min_size=1,
    max_size=120,
)
odd_samples = st.lists(
    st.tuples(
        st.dictionaries(st.sampled_from([*NAMES, "new"]), odd, max_size=5),
        st.one_of(st.sampled_from(["x", "y", "z"]), st.sampled_from([0, 1, 2])),
    ),
    min_size=1,
    max_size=120,
)
trees = st.builds(
    tree.HoeffdingTreeClassifier,
    grace_period=st.integers(2, 30),
    max_depth=st.sampled_from([2, 3, None]),
    leaf_prediction=st.sampled_from(["nba", "nba", "nb", "mc"]),
    delta=st.sampled_from([1e-7, 0.1]),
    tau=st.sampled_from([0.05, 0.5]),
    binary_split=st.booleans(),
    nominal_attributes=st.sampled_from([None, ["c"]]),
)


def outcome(call: Any, *args: Any) -> tuple[str, str]:
    """What a call answers, or the type of what it raises: compared as text (a NaN equals
    itself there)."""
    try:
        return "answer", repr(call(*args))
    except Exception as exc:
        return "raised", type(exc).__name__


@pytest.fixture(params=["in C", "in Python"])
def passes(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Each test runs with the C passes and with River's own steps in their place."""
    if request.param == "in Python":
        monkeypatch.setattr(tree_learning, "update_gaussians_in_c", None)
        monkeypatch.setattr(tree_learning, "add_log_densities_in_c", None)
    yield request.param


def learn_both(model: tree.HoeffdingTreeClassifier, stream: list[tuple[dict[str, Any], Any]]):
    """Learn ``stream`` with River and with `TreeLearning` on two clones; after each sample,
    the answers, the raised errors and the pickled trees must be the same."""
    river, ours = model.clone(), model.clone()
    fast = TreeLearning(ours)
    for i, (x, y) in enumerate(stream):
        assert outcome(fast.predict_proba_one, dict(x)) == outcome(
            river.predict_proba_one, dict(x)
        ), i
        assert outcome(fast.predict_one, dict(x)) == outcome(river.predict_one, dict(x)), i
        assert outcome(fast.learn_one, dict(x), y) == outcome(river.learn_one, dict(x), y), i
        assert tree_state(ours) == tree_state(river), i
    return ours


def test_the_c_passes_are_built() -> None:
    """pip install builds learners/_tree_pass.c (CI installs a compiler)."""
    assert tree_learning.update_gaussians_in_c is not None
    assert tree_learning.add_log_densities_in_c is not None


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(model=trees, stream=samples)
def test_numbers_learn_as_river_does(
    passes: str, model: tree.HoeffdingTreeClassifier, stream: list[Any]
) -> None:
    learn_both(model, stream)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(model=trees, stream=odd_samples)
def test_odd_values_and_classes_learn_and_raise_as_river_does(
    passes: str, model: tree.HoeffdingTreeClassifier, stream: list[Any]
) -> None:
    learn_both(model, stream)


def test_a_grown_tree_on_agrawal_is_river_s_after_every_sample(passes: str) -> None:
    """Splits, adaptive leaves choosing naive Bayes, ints and floats: 3 000 samples."""
    stream = list(load_dataset("synth.Agrawal", limit=3_000, seed=7))
    grown = learn_both(tree.HoeffdingTreeClassifier(grace_period=100), stream)
    assert grown.height >= 3


def grown(
    stream: list[tuple[dict[str, Any], Any]], grace_period: int = 20
) -> tuple[Any, TreeLearning]:
    """A River tree and a `TreeLearning` clone after ``stream``, each learned its own way."""
    model = tree.HoeffdingTreeClassifier(grace_period=grace_period)
    river, fast = model.clone(), TreeLearning(model.clone())
    for x, y in stream:
        river.learn_one(dict(x), y)
        fast.learn_one(dict(x), y)
    assert tree_state(fast.model) == tree_state(river)
    return river, fast


def test_a_value_whose_density_overflows_raises_as_river_does(passes: str) -> None:
    """``(x - mu) ** 2`` past the largest float: Python raises OverflowError in River's naive
    Bayes; the C pass must leave it to River, not answer."""
    # one leaf (no split yet) whose naive Bayes does better than its majority class
    stream = [({"a": float(i % 9), "b": i % 4}, i % 9 > 4) for i in range(60)]
    river, fast = grown(stream, grace_period=1000)
    leaf = river._root
    assert leaf._nb_correct_weight >= leaf._mc_correct_weight
    x = {"a": 1e155, "b": 1}
    assert outcome(river.predict_proba_one, x) == ("raised", "OverflowError")
    assert outcome(fast.predict_proba_one, x) == outcome(river.predict_proba_one, x)
    assert outcome(fast.learn_one, x, True) == outcome(river.learn_one, x, True)
    assert tree_state(fast.model) == tree_state(river)


class Refusing(float):
    """A value River's split raises on with neither a KeyError nor a TypeError."""

    def __le__(self, other: object) -> bool:
        raise ValueError("no order")


def test_an_error_in_the_walk_is_raised_after_river_s_own_first_changes(passes: str) -> None:
    river, fast = grown([({"a": float(i % 9), "b": i % 4}, i % 9 > 4) for i in range(400)])
    assert river.height > 1
    x = {"a": Refusing(3.0), "b": 1}
    assert outcome(fast.learn_one, x, "new") == outcome(river.learn_one, x, "new")
    assert outcome(fast.learn_one, x, "new") == ("raised", "ValueError")
    assert outcome(river.learn_one, x, "new") == ("raised", "ValueError")
    assert "new" in fast.model.classes
    assert tree_state(fast.model) == tree_state(river)


def test_the_learner_s_trees_learn_through_it() -> None:
    state = ModelState.from_spec(ModelSpec("tree", "hoeffding"))
    state.predict({"a": 1.0})
    assert isinstance(state._calls, TreeLearning)
    other = ModelState.from_spec(ModelSpec("tree", "river.tree:HoeffdingAdaptiveTreeClassifier"))
    other.predict({"a": 1.0})
    assert other._calls is other.model  # another tree: River's own methods
    assert compile_tree_learning(tree.HoeffdingAdaptiveTreeClassifier()) is None


def test_a_river_that_learns_otherwise_is_not_compiled(monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe at compile time catches a River whose leaves learn otherwise than the steps
    mirrored here (here: each sample weighing twice in River's own method)."""
    learn_one = LeafNaiveBayesAdaptive.learn_one

    def twice(self: Any, x: dict[str, Any], y: Any, *, w: float = 1.0, tree: Any = None) -> None:
        learn_one(self, x, y, w=2 * w, tree=tree)

    assert compile_tree_learning(tree.HoeffdingTreeClassifier()) is not None
    monkeypatch.setattr(LeafNaiveBayesAdaptive, "learn_one", twice)
    assert compile_tree_learning(tree.HoeffdingTreeClassifier()) is None
