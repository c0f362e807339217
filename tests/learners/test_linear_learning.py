"""`learners.linear_learning`: a linear pipeline learning and predicting in one pass leaves
River's state, to the bit (the pickled steps after every sample), answers what River answers
and raises what River raises, at the same point; anything else is left to River."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from river import compose, linear_model, optim, preprocessing

from learners.linear_learning import LinearLearning, compile_learning
from learners.model_state import ModelState
from learners.specs import ModelSpec

NAMES = ["a", "b", "c", "d"]

value = st.one_of(
    st.floats(-1e6, 1e6),
    st.floats(),  # NaN, infinities, the largest floats
    st.integers(-1000, 1000),
    st.integers(-(10**400), 10**400),  # beyond a float: River's OverflowError
    st.booleans(),
    st.just(-0.0),
)
odd_value = st.one_of(value, st.text(max_size=2))  # a TypeError, after some entries are written
features = st.dictionaries(st.sampled_from(NAMES), value, max_size=4)
odd_features = st.dictionaries(st.sampled_from([*NAMES, "new"]), odd_value, max_size=5)

MODELS = {
    "logreg": lambda: linear_model.LogisticRegression(),
    "logreg l2, clipped": lambda: linear_model.LogisticRegression(l2=0.01, clip_gradient=0.5),
    "logreg hinge, sgd 0.1, no intercept": lambda: linear_model.LogisticRegression(
        loss=optim.losses.Hinge(), optimizer=optim.SGD(0.1), intercept_lr=0.0
    ),
    "logreg scheduled": lambda: linear_model.LogisticRegression(
        optimizer=optim.SGD(optim.schedulers.InverseScaling(0.1)),
        intercept_lr=optim.schedulers.InverseScaling(0.05),
    ),
    "logreg adam (its own learn_one)": lambda: linear_model.LogisticRegression(
        optimizer=optim.Adam()
    ),
    "logreg l1 (its own learn_one)": lambda: linear_model.LogisticRegression(l1=0.01),
    "linreg": lambda: linear_model.LinearRegression(),
    "linreg huber, l2": lambda: linear_model.LinearRegression(loss=optim.losses.Huber(), l2=0.1),
}


def outcome(call: Any, *args: Any) -> tuple[Any, ...]:
    try:
        return ("answer", repr(call(*args)))
    except Exception as exc:  # the same error, type and message, is part of the contract
        return ("raised", type(exc), str(exc))


def state(model: compose.Pipeline) -> bytes:
    return pickle.dumps(list(model.steps.values()), protocol=pickle.HIGHEST_PROTOCOL)


@pytest.mark.parametrize("case", MODELS)
@settings(max_examples=150, deadline=None)
@given(
    stream=st.lists(
        st.tuples(features, st.sampled_from([True, False, 0, 1, 2.5, -1.0, "yes"])), max_size=30
    ),
    query=odd_features,
    odd=odd_features,
)
def test_learns_and_answers_as_river_to_the_bit(
    case: str, stream: list, query: dict, odd: dict
) -> None:
    """After every sample (and a sample River cannot use), the pickled steps are equal bytes,
    and every prediction (or error) is the same."""
    ours = preprocessing.StandardScaler() | MODELS[case]()
    river = preprocessing.StandardScaler() | MODELS[case]()
    fast = compile_learning(ours)
    assert isinstance(fast, LinearLearning)
    classifier = isinstance(list(ours.steps.values())[1], linear_model.LogisticRegression)
    for x, y in [*stream, (odd, True if classifier else 1.0)]:
        for name in ("predict_one", "predict_proba_one") if classifier else ("predict_one",):
            assert outcome(getattr(fast, name), query) == outcome(getattr(river, name), query)
        label = y if classifier or type(y) is not bool else float(y)
        assert outcome(fast.learn_one, x, label) == outcome(river.learn_one, x, label)
        assert state(ours) == state(river)


def test_only_plain_linear_pipelines_are_compiled() -> None:
    scaled = preprocessing.StandardScaler
    assert compile_learning(scaled() | linear_model.LogisticRegression()) is not None
    assert compile_learning(scaled(with_std=False) | linear_model.LogisticRegression()) is None
    assert compile_learning(scaled(window_size=5) | linear_model.LogisticRegression()) is None
    assert compile_learning(preprocessing.MinMaxScaler() | linear_model.LinearRegression()) is None
    assert compile_learning(linear_model.LogisticRegression()) is None
    three = scaled() | scaled() | linear_model.LogisticRegression()
    assert compile_learning(three) is None

    class Scaler(preprocessing.StandardScaler):
        pass

    assert compile_learning(Scaler() | linear_model.LogisticRegression()) is None


def test_a_river_that_learns_otherwise_keeps_river_s_own_learning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The probes at compile time: a scaler whose update differs from the one written here
    (as a River release might) is not compiled."""
    original = preprocessing.StandardScaler.learn_one

    def halved(self: Any, x: dict[str, Any]) -> None:
        original(self, {k: v / 2 for k, v in x.items()})

    monkeypatch.setattr(preprocessing.StandardScaler, "learn_one", halved)
    assert (
        compile_learning(preprocessing.StandardScaler() | linear_model.LogisticRegression()) is None
    )


def test_learn_during_predict_is_river_s() -> None:
    """Inside `compose.learn_during_predict`, predictions update the scaler: River does it."""
    ours = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    river = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    fast = compile_learning(ours)
    assert fast is not None
    with compose.learn_during_predict():
        for i in range(20):
            x = {"a": float(i), "b": float(i % 3)}
            assert fast.predict_proba_one(x) == river.predict_proba_one(x)
            fast.learn_one(x, i % 2 == 0)
            river.learn_one(x, i % 2 == 0)
    assert state(ours) == state(river)


def test_a_model_state_learns_through_it_and_pickles_without_it() -> None:
    """`ModelState` uses the compiled form for logreg and linreg (not for others), and a
    pickled state does not carry it: a restored state compiles again at its first call."""
    state_ = ModelState.from_spec(ModelSpec("m", "logreg"))
    river = ModelSpec("m", "logreg").build()
    for i in range(30):
        x = {"a": float(i % 5), "b": float(i % 7)}
        assert state_.predict(x) == (river.predict_one(x), None)
        state_.learn(x, i % 3 == 0, (None, None))
        river.learn_one(x, i % 3 == 0)
    assert isinstance(state_._calls, LinearLearning)
    restored = pickle.loads(pickle.dumps(state_))
    assert restored._calls is None
    assert restored.predict({"a": 1.0}) == (river.predict_one({"a": 1.0}), None)
    assert isinstance(restored._calls, LinearLearning)
    assert state(restored.model) == state(river)  # type: ignore[arg-type]
    tree = ModelState.from_spec(ModelSpec("t", "hoeffding"))
    tree.learn({"a": 1.0}, True, (None, None))
    assert tree._calls is tree.model


def test_an_optimizer_changed_after_compiling_learns_as_river() -> None:
    """River's `mutate` may swap a model's optimizer or penalty: read at every sample."""
    ours = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    river = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    fast = compile_learning(ours)
    assert fast is not None
    for i in range(40):
        if i == 20:
            for model in (ours, river):
                model["LogisticRegression"].optimizer = optim.Adam()
        x = {"a": float(i % 5), "b": float(i % 7)}
        fast.learn_one(x, i % 3 == 0)
        river.learn_one(x, i % 3 == 0)
        assert state(ours) == state(river)


def _trained(model: Any) -> compose.Pipeline:
    pipeline = preprocessing.StandardScaler() | model
    for i in range(200):
        x = {"a": (i * 7) % 11 - 5.0, "b": (i * 3) % 5 * 0.5, "c": float(i % 13)}
        pipeline.learn_one(
            x, (i % 3 == 0) if isinstance(model, linear_model.LogisticRegression) else i % 7 * 0.5
        )
    return pipeline


@pytest.mark.parametrize("model", [linear_model.LogisticRegression, linear_model.LinearRegression])
def test_values_that_are_not_floats_are_answered_as_river_does(model: Any) -> None:
    """numpy's float32 (River's dot works in float64) and a complex value (River's dot refuses
    it): River's own answer or error, and the same state after it."""
    import numpy as np

    ours = _trained(model())
    river = pickle.loads(pickle.dumps(ours))
    fast = compile_learning(ours)
    assert isinstance(fast, LinearLearning)
    names = (
        ("predict_one", "predict_proba_one")
        if model is linear_model.LogisticRegression
        else ("predict_one",)
    )
    for x in (
        {"a": np.float32(0.1), "b": np.float32(1.3), "c": np.float32(2.7)},
        {"a": 1 + 2j},
        {"new": np.float32(1.0)},
    ):
        for name in names:
            assert outcome(getattr(fast, name), dict(x)) == outcome(getattr(river, name), dict(x))
        assert state(ours) == state(river)


def test_a_river_that_breaks_ties_otherwise_keeps_river_s_own_predictions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The probes at compile time include a tie (p = 0.5) for a trained model: a River whose
    label at a tie is True is not compiled."""
    from river import base

    assert compile_learning(_trained(linear_model.LogisticRegression())) is not None

    def ties_to_true(self: Any, x: dict[str, Any], **kwargs: Any) -> Any:
        y = self.predict_proba_one(x, **kwargs)
        return max(reversed(list(y)), key=y.get) if y else None

    monkeypatch.setattr(base.Classifier, "predict_one", ties_to_true)
    assert compile_learning(_trained(linear_model.LogisticRegression())) is None


def test_a_label_is_a_class_whatever_the_loss_returns() -> None:
    """A loss swapped after compiling whose mean function gives numpy floats: the label is
    River's, a plain bool (a key of River's probabilities)."""
    import numpy as np

    class NumpyLog(optim.losses.Log):
        def mean_func(self, y_pred: Any) -> Any:
            return np.float64(super().mean_func(y_pred))

    ours = _trained(linear_model.LogisticRegression())
    river = pickle.loads(pickle.dumps(ours))
    fast = compile_learning(ours)
    assert isinstance(fast, LinearLearning)
    for pipeline in (ours, river):
        pipeline["LogisticRegression"].loss = NumpyLog()
    for x in ({"a": 1.0, "b": 0.5}, {"c": -3.0}):
        got, want = fast.predict_one(dict(x)), river.predict_one(dict(x))
        assert repr(got) == repr(want) and type(got) is bool
