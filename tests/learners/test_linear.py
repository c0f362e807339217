"""`learners.linear`: the one-pass prediction of a linear pipeline answers what River answers,
bit for bit (``repr`` of every number, so -0.0 and an integer 0 from the sigmoid count), and
raises what River raises; anything it cannot reproduce is left to River."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Hashable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from river import compose, linear_model, optim, preprocessing, utils

from learners import linear
from learners.linear import compile_linear
from learners.predictor import ServedModel

NAMES = ["a", "b", "c", "d", "e"]

train_value = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False),
    st.integers(-1000, 1000),
    st.booleans(),
)
query_value = st.one_of(
    st.floats(allow_nan=False),  # with infinities and the largest floats
    st.integers(-(10**400), 10**400),  # beyond a float: River's OverflowError
    st.booleans(),
    st.text(max_size=3),  # a TypeError, unless the feature is unknown or constant
)
rows = st.lists(st.dictionaries(st.sampled_from(NAMES), train_value, max_size=5), max_size=40)
queries = st.dictionaries(st.sampled_from([*NAMES, "unseen"]), query_value, max_size=6)


def outcome(predict: Any, x: dict[str, Any]) -> tuple[Any, ...]:
    try:
        return ("answer", repr(predict(x)))
    except Exception as exc:  # the same error, type and message, is part of the contract
        return ("raised", type(exc), str(exc))


def trained(model: Any, data: list[dict[str, Any]], classify: bool) -> Any:
    for i, x in enumerate(data):
        x = {**x, "constant": 1.0}  # a feature without variance
        y = (i % 3 == 0) if classify else float(sum(float(v) for v in x.values()) % 7)
        model.learn_one(x, y)
    return model


CASES: dict[str, tuple[type[Any], list[optim.losses.Loss]]] = {
    "logreg": (linear_model.LogisticRegression, [optim.losses.Log(), optim.losses.Hinge()]),
    "linreg": (linear_model.LinearRegression, [optim.losses.Squared(), optim.losses.Huber()]),
}


@contextlib.contextmanager
def summed(where: str) -> Iterator[None]:
    """Functions compiled in here sum in C (`learners/_linear_pass.c`, as installed), or in
    Python alone (as without a C compiler)."""
    with pytest.MonkeyPatch.context() as patch:
        if where == "python":
            patch.setattr(linear, "dot_standardized_in_c", None)
        yield


def test_the_c_sum_is_built() -> None:
    """The tests below compare both sums with River; without the extension they would compare
    the Python one twice."""
    assert linear.dot_standardized_in_c is not None, "pip install -e . again to build it"


@pytest.mark.parametrize("where", ["c", "python"])
@pytest.mark.parametrize("case", CASES)
@settings(max_examples=300, deadline=None)
@given(data=rows, x=queries, draw=st.data())
def test_answers_river_s_numbers_bit_for_bit(
    where: str, case: str, data: list, x: dict, draw: st.DataObject
) -> None:
    """River's ``predict_proba_one`` (logreg) or ``predict_one`` (linreg), and the served
    answer (prediction and probabilities) or the error of River's own path: with the sum in C
    and without it."""
    with summed(where):
        _answers_river_s_numbers(case, data, x, draw)


def _answers_river_s_numbers(case: str, data: list, x: dict, draw: st.DataObject) -> None:
    model_class, losses = CASES[case]
    classify = model_class is linear_model.LogisticRegression
    model = trained(
        preprocessing.StandardScaler() | model_class(loss=draw.draw(st.sampled_from(losses))),
        data,
        classify,
    )
    fast = compile_linear(model)
    assert fast is not None
    if draw.draw(st.booleans()):
        x["constant"] = x.get("a", 2.5)  # the feature without variance, queried
    river = model.predict_proba_one if classify else model.predict_one
    assert outcome(fast, x) == outcome(river, x)
    served = ServedModel.build(
        "m", model, version=1, kind="classifier" if classify else "regressor"
    )
    assert served.linear is not None
    assert outcome(served.predict, x) == outcome(replace(served, linear=None).predict, x)


def pipeline(
    means: dict, variances: dict, weights: dict, intercept: float, classify: bool = True
) -> Any:
    scaler = preprocessing.StandardScaler._from_state(
        counts=dict.fromkeys(means, 10), means=means, vars=variances
    )
    model = linear_model.LogisticRegression() if classify else linear_model.LinearRegression()
    model._weights = utils.VectorDict(weights)
    model.intercept = intercept
    return compose.Pipeline(scaler, model)


magnitude = st.builds(lambda m, e: m * 10.0**e, st.floats(-10, 10), st.integers(-12, 12))


@pytest.mark.parametrize("where", ["c", "python"])
@settings(max_examples=300, deadline=None)
@given(
    state=st.dictionaries(
        st.text(min_size=1, max_size=2),
        st.tuples(magnitude, st.floats(0, 1e6) | st.just(0.0), magnitude),
        max_size=30,
    ),
    order=st.randoms(use_true_random=False),
    intercept=magnitude,
)
def test_terms_are_added_in_the_order_of_the_features_as_river_does(
    where: str, state: dict, order: Any, intercept: float
) -> None:
    """Weights over twelve orders of magnitude: a sum in another order would round otherwise
    (what would catch a River release that changes how `VectorDict.dot` adds). A regressor,
    whose answer is the sum itself (a sigmoid would saturate and hide it). With the sum in C
    and without it."""
    with summed(where):
        _terms_in_river_s_order(state, order, intercept)


def _terms_in_river_s_order(state: dict, order: Any, intercept: float) -> None:
    model = pipeline(
        {k: m for k, (m, _, _) in state.items()},
        {k: v for k, (_, v, _) in state.items()},
        {k: w for k, (_, _, w) in state.items()},
        intercept,
        classify=False,
    )
    keys = list(state)
    order.shuffle(keys)
    x = {k: order.uniform(-1e3, 1e3) for k in keys}
    fast = compile_linear(model)
    assert fast is not None
    assert repr(fast(x)) == repr(model.predict_one(x))


@pytest.mark.parametrize(
    "estimator",
    [
        preprocessing.MinMaxScaler() | linear_model.LogisticRegression(),
        preprocessing.StandardScaler(with_std=False) | linear_model.LogisticRegression(),
        preprocessing.StandardScaler(window_size=10) | linear_model.LogisticRegression(),
        linear_model.LogisticRegression(),
        preprocessing.StandardScaler() | preprocessing.StandardScaler() | linear_model.LinearRegression(),
        pipeline({"a": 0.0}, {"a": 1.0}, {"a": math.inf}, 0.0),
        pipeline({"a": 0.0}, {"a": 1.0}, {"a": 1.0}, math.nan),
        pipeline({"a": math.nan}, {"a": 1.0}, {"a": 1.0}, 0.0),
        pipeline({"a": 0.0}, {"a": -1e-300}, {"a": 1.0}, 0.0),
    ],
    ids=[
        "another scaler", "without std", "windowed", "no scaler",
        "three steps", "infinite weight", "nan intercept", "nan mean", "negative variance",
    ],
)  # fmt: skip
def test_what_it_cannot_reproduce_is_left_to_river(estimator: Any) -> None:
    assert compile_linear(estimator) is None


def test_a_subclass_is_left_to_river() -> None:
    class Mine(linear_model.LogisticRegression):
        def predict_proba_one(
            self, x: dict[Hashable, Any], **kwargs: Any
        ) -> dict[bool | str | int, float]:
            return {False: 0.0, True: 1.0}

    assert compile_linear(preprocessing.StandardScaler() | Mine()) is None


def test_the_served_model_answers_through_it_with_river_s_numbers() -> None:
    model = trained(
        preprocessing.StandardScaler() | linear_model.LogisticRegression(),
        [{"a": i % 5, "b": (i * 7) % 11 / 3} for i in range(200)],
        True,
    )
    served = ServedModel.build("m", model, version=1, kind="classifier")
    assert served.linear is not None
    x = {"a": 3, "b": 0.25, "unseen": 1.0}
    proba = model.predict_proba_one(x)
    assert served.predict(x) == (max(proba, key=proba.__getitem__), proba)
    regressor = trained(
        preprocessing.StandardScaler() | linear_model.LinearRegression(),
        [{"a": i % 5} for i in range(50)],
        False,
    )
    served = ServedModel.build("r", regressor, version=1, kind="regressor")
    assert served.linear is not None
    assert served.predict({"a": 4}) == (regressor.predict_one({"a": 4}), None)
    assert ServedModel.build("t", linear_model.LogisticRegression(), version=1).linear is None


def _logreg() -> Any:
    return trained(
        preprocessing.StandardScaler() | linear_model.LogisticRegression(),
        [{"a": i % 5, "b": (i * 7) % 11 / 3} for i in range(100)],
        True,
    )


def test_a_river_that_computes_otherwise_is_served_by_river(monkeypatch: Any) -> None:
    """The probes at compile time: were River's scaler to divide by the variance (a release
    computing otherwise), the compiled form would disagree, and is not used."""
    model = _logreg()
    assert compile_linear(model) is not None

    def by_variance(self: Any, x: dict) -> dict:
        return {
            i: (xi - self.means[i]) / self.vars[i] if self.vars[i] else 0.0 for i, xi in x.items()
        }

    monkeypatch.setattr(preprocessing.StandardScaler, "transform_one", by_variance)
    assert compile_linear(model) is None


def test_river_internals_that_moved_give_river_not_an_error() -> None:
    model = _logreg()
    model["LogisticRegression"]._weights = object()  # no to_dict: a renamed internal
    assert compile_linear(model) is None
    served = ServedModel.build("m", model, version=1, kind="classifier")
    assert served.linear is None
