"""The served model: requests cannot grow it, and its answers stay River's."""

from __future__ import annotations

import contextlib
import copy
import pickle
from collections.abc import Callable
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st
from river import datasets, forest, linear_model, preprocessing, tree

from learners.predictor import NonFiniteAnswer, ServedModel, _first_argmax

MODELS: dict[str, tuple[Callable[[], Any], Callable[[], Any], str]] = {
    "logreg": (lambda: preprocessing.StandardScaler() | linear_model.LogisticRegression(),
               datasets.Phishing, "classifier"),
    "minmax-linreg": (lambda: preprocessing.MinMaxScaler() | linear_model.LinearRegression(),
                      datasets.TrumpApproval, "regressor"),
    "hoeffding": (tree.HoeffdingTreeClassifier, datasets.Phishing, "classifier"),
    "arf": (lambda: forest.ARFClassifier(n_models=3, seed=1), datasets.Phishing, "classifier"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(MODELS))
def test_made_up_features_do_not_grow_the_served_model(name: str) -> None:
    """Before: 1 000 requests with made-up feature names grew a scaler pipeline's pickle from
    1.5 KB to 17 KB (StandardScaler) or 59 KB (MinMaxScaler), without bound."""
    factory, dataset, kind = MODELS[name]
    model = factory()
    samples = list(dataset().take(200))
    for x, y in samples:
        model.learn_one(x, y)
    reference = copy.deepcopy(model)
    served = ServedModel.build("m", model, version=1, kind=kind)
    size = len(pickle.dumps(served.estimator))
    for i in range(1000):
        # MinMaxScaler maps an unseen feature to NaN (River's own answer): a 422 in serving.
        with contextlib.suppress(NonFiniteAnswer):
            served.predict({f"made-up-{i}": 1.0, **samples[i % len(samples)][0]})
    assert len(pickle.dumps(served.estimator)) == size
    for x, _ in samples[::7]:  # the same answers as the untouched River model
        expected = (
            reference.predict_proba_one(x) if kind == "classifier" else reference.predict_one(x)
        )
        prediction, proba = served.predict(x)
        assert (proba if kind == "classifier" else prediction) == expected


@given(
    st.dictionaries(
        st.one_of(st.booleans(), st.integers(0, 3), st.text(max_size=2)),
        st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]),  # few values: many ties
        max_size=4,
    )
)
def test_the_served_argmax_is_rivers_predict_one(proba: dict[object, float]) -> None:
    """`ServedModel.predict` answers River's default ``predict_one`` from one
    ``predict_proba_one``: the first most probable class, ties included, None when empty."""
    # base.Classifier.predict_one:
    river_answer = max(proba, key=cast(Callable[[object], float], proba.get)) if proba else None
    assert _first_argmax(proba) == river_answer
    assert type(_first_argmax(proba)) is type(river_answer)  # True stays True, never 1


def test_served_classifiers_predict_as_river_does() -> None:
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    for x, y in datasets.Phishing().take(200):
        model.learn_one(x, y)
    reference = copy.deepcopy(model)
    served = ServedModel.build("m", model, version=1, kind="classifier")
    assert served.argmax
    for x, _ in datasets.Phishing().take(200):
        assert served.predict(x) == (reference.predict_one(x), reference.predict_proba_one(x))
