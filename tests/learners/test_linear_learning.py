"""`learners.linear_learning`: a linear pipeline learning and predicting in one pass (a whole
sample of plain SGD in one C call) leaves River's state, to the bit (the pickled steps after every sample; a NaN's sign and payload
aside, which CPython's own arithmetic does not keep), answers what River answers and raises what
River raises, at the same point; anything else is left to River. With the C pass
(`learners/_linear_pass.c`) and without it."""

from __future__ import annotations

import contextlib
import math
import pickle
import pickletools
import struct
from collections.abc import Iterator
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from river import compose, linear_model, optim, preprocessing

from learners import linear_learning
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


def state(model: compose.Pipeline) -> list[tuple[str, Any]]:
    """The pickled steps, opcode by opcode, every float as its 8 bytes (so -0.0 is not 0.0) but
    a NaN's, whose sign and payload are not River's to keep: CPython's own generic and
    specialised float additions give different NaNs for the same two NaN operands, so River's
    loop leaves different bits cold and warm."""
    ops = pickletools.genops(pickle.dumps(list(model.steps.values()), pickle.HIGHEST_PROTOCOL))
    return [(op.name, _bits(arg)) for op, arg, _ in ops]


def _bits(arg: Any) -> Any:
    if arg.__class__ is not float:
        return arg
    return "nan" if math.isnan(arg) else struct.pack(">d", arg)


@contextlib.contextmanager
def passes(where: str) -> Iterator[None]:
    """The scaler's pass and the dot product in C (`learners/_linear_pass.c`, as installed), or
    in Python alone (as without a C compiler)."""
    with pytest.MonkeyPatch.context() as patch:
        if where == "python":
            patch.setattr(linear_learning, "scale_learn_in_c", None)
            patch.setattr(linear_learning, "dot_scaled_in_c", None)
            patch.setattr(linear_learning, "sgd_learn_in_c", None)
        yield


def test_the_c_pass_is_built() -> None:
    """The tests below compare both passes with River; without the extension they would
    compare the Python one twice."""
    assert linear_learning.scale_learn_in_c is not None, "pip install -e . again to build it"
    assert linear_learning.dot_scaled_in_c is not None
    assert linear_learning.sgd_learn_in_c is not None


@pytest.mark.parametrize("where", ["c", "python"])
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
    where: str, case: str, stream: list, query: dict, odd: dict
) -> None:
    """After every sample (and a sample River cannot use), the pickled steps are equal (opcode
    by opcode, every float's bits but a NaN's: see `state`), and every prediction (or error) is
    the same: with the C pass and without it."""
    with passes(where):
        _learns_and_answers_as_river(case, stream, query, odd)


def _learns_and_answers_as_river(case: str, stream: list, query: dict, odd: dict) -> None:
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
    river = cast(compose.Pipeline, ModelSpec("m", "logreg").build())
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
    assert state(restored.model) == state(river)
    forest = ModelState.from_spec(ModelSpec("f", "arf"))  # (a Hoeffding tree's: tree_learning)
    forest.learn({"a": 1.0}, True, (None, None))
    assert forest._calls is forest.model


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


def _agrawal(n: int) -> list[tuple[dict[str, Any], bool]]:
    from river.datasets import synth

    return [(x, bool(y)) for x, y in synth.Agrawal(seed=7).take(n)]


@pytest.mark.parametrize("where", ["c", "python"])
def test_a_real_stream_of_floats_and_ints_learns_as_river(where: str) -> None:
    """Agrawal's nine features, ints and floats, 3 000 samples: the same state after each one
    and the same predictions before it."""
    ours = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    river = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    fast = compile_learning(ours)
    assert fast is not None
    with passes(where):
        for i, (x, y) in enumerate(_agrawal(3000)):
            assert fast.predict_proba_one(x) == river.predict_proba_one(x)
            fast.learn_one(x, y)
            river.learn_one(x, y)
            if i % 100 == 0:
                assert state(ours) == state(river)
    assert state(ours) == state(river)


def test_the_c_pass_leaves_what_it_does_not_take_untouched() -> None:
    """Each kind the C pass leaves to Python (a bool, an int past 2**53, a string, a name that
    is not a str, a count that is not an int, a mean that is not a float, a dict subclass):
    None, and nothing written."""
    assert linear_learning.scale_learn_in_c is not None
    assert linear_learning.dot_scaled_in_c is not None
    scale, dot = linear_learning.scale_learn_in_c, linear_learning.dot_scaled_in_c
    model = _trained(linear_model.LogisticRegression())
    scaler = model["StandardScaler"]
    weights = model["LogisticRegression"]._weights.to_dict()

    class Features(dict):
        pass

    for x in (
        {"a": 1.0, "b": True},
        {"a": 2**53 + 1},
        {"a": 1.0, "b": "text"},
        {"a": 1.0, 7: 2.0},
        Features(a=1.0),
    ):
        before = state(model)
        assert scale(cast(dict[str, Any], x), scaler.counts, scaler.means, scaler.vars) is None, x
        assert dot(cast(dict[str, Any], x), scaler.means, scaler.vars, weights) is None, x
        assert state(model) == before
    for stats, key, odd in (
        (scaler.counts, "a", 2.0),
        (scaler.means, "b", 1),
        (scaler.vars, "c", 1),
    ):
        kept = stats[key]
        stats[key] = odd
        before = state(model)
        assert (
            scale({"a": 1.0, "b": 2.0, "c": 3.0}, scaler.counts, scaler.means, scaler.vars) is None
        )
        assert state(model) == before
        stats[key] = kept
    assert scale({"a": 1.0}, dict(scaler.counts), scaler.means, scaler.vars) is None
    assert scale({"a": 1.0}, scaler.counts, dict(scaler.means), scaler.vars) is None


def test_a_mean_held_elsewhere_is_not_changed_in_place() -> None:
    """The C pass updates a stored float in place only when the dict alone holds it: a float
    read out before stays what it was."""
    model = _trained(linear_model.LogisticRegression())
    scaler = model["StandardScaler"]
    held, value = scaler.means["a"], float(scaler.means["a"])
    river = pickle.loads(pickle.dumps(model))
    fast = compile_learning(model)
    assert fast is not None
    fast.learn_one({"a": 100.0, "b": 1.0}, True)
    river.learn_one({"a": 100.0, "b": 1.0}, True)
    assert held == value
    assert scaler.means["a"] != value
    assert state(model) == state(river)


@pytest.mark.parametrize("variance", [-1.0, float("inf"), float("nan")])
def test_a_variance_that_is_not_positive_and_finite_is_learned_as_river(variance: float) -> None:
    """A state no stream makes (a negative variance, set by hand) or an infinite one: River's
    own power and division (a complex number for a negative variance), and River's answers."""
    ours = _trained(linear_model.LinearRegression())
    fast = compile_learning(ours)
    assert fast is not None
    ours["StandardScaler"].vars["a"] = variance
    river = pickle.loads(pickle.dumps(ours))
    x = {"a": 0.5, "b": 1.0, "c": 2.0}
    assert outcome(fast.predict_one, x) == outcome(river.predict_one, x)
    assert outcome(fast.learn_one, x, 1.5) == outcome(river.learn_one, x, 1.5)
    assert state(ours) == state(river)


def test_more_features_than_the_c_pass_takes_are_learned_in_python() -> None:
    """600 features, past the C pass's 512: the Python loop learns, as River."""
    ours = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    river = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    fast = compile_learning(ours)
    assert fast is not None
    x = {f"f{i}": i * 0.5 for i in range(600)}
    scaler = ours["StandardScaler"]
    assert linear_learning.scale_learn_in_c is not None
    assert linear_learning.scale_learn_in_c(x, scaler.counts, scaler.means, scaler.vars) is None
    for y in (True, False, True):
        fast.learn_one(x, y)
        river.learn_one(x, y)
        assert fast.predict_proba_one(x) == river.predict_proba_one(x)
    assert state(ours) == state(river)


@pytest.mark.parametrize("where", ["c", "python"])
def test_infinity_then_nan_learns_as_river(where: str) -> None:
    """A feature's infinity, then its NaN (the stream a review found): the same state, and the
    same answers, whichever pass learns."""
    with passes(where):
        ours = preprocessing.StandardScaler() | linear_model.LinearRegression()
        river = preprocessing.StandardScaler() | linear_model.LinearRegression()
        fast = compile_learning(ours)
        assert fast is not None
        for x in ({"a": math.inf, "b": 1.0}, {"a": math.nan, "b": 2.0}, {"a": 1.0, "b": 3.0}):
            assert outcome(fast.predict_one, x) == outcome(river.predict_one, x)
            fast.learn_one(dict(x), 1.0)
            river.learn_one(dict(x), 1.0)
            assert state(ours) == state(river)


@pytest.mark.parametrize(
    "model",
    [
        linear_model.LogisticRegression,
        lambda: linear_model.LogisticRegression(
            loss=optim.losses.Log(weight_pos=2.0, weight_neg=0.5),
            optimizer=optim.SGD(0.05),
            intercept_lr=0.02,
            clip_gradient=0.05,
        ),
        linear_model.LinearRegression,
    ],
)
def test_plain_sgd_learns_each_sample_in_one_c_call(
    model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain SGD pipeline (a Log or Squared loss, no penalty, zeros for new weights) learns
    every sample of a real stream through `sgd_learn` alone, which answers each (nothing is
    left to the steps in Python), and River's state after each sample is the same."""
    answers: list[float | None] = []
    sgd_learn = linear_learning.sgd_learn_in_c
    assert sgd_learn is not None

    def counted(*args: Any) -> float | None:
        answers.append(sgd_learn(*args))
        return answers[-1]

    def not_called(*args: Any) -> None:
        raise AssertionError("the scaler's pass alone ran")

    ours, river = preprocessing.StandardScaler() | model(), preprocessing.StandardScaler() | model()
    fast = compile_learning(ours)
    assert isinstance(fast, LinearLearning)
    monkeypatch.setattr(linear_learning, "sgd_learn_in_c", counted)
    monkeypatch.setattr(linear_learning, "scale_learn_in_c", not_called)
    classifier = isinstance(list(ours.steps.values())[1], linear_model.LogisticRegression)
    for i, (x, y) in enumerate(_agrawal(600)):
        label = y if classifier else float(y) + x["age"] / 10
        fast.learn_one(x, label)
        river.learn_one(x, label)
        if i % 50 == 0 or i > 590:
            assert state(ours) == state(river)
    assert len(answers) == 600 and None not in answers


def test_sgd_learn_leaves_what_it_does_not_take_untouched() -> None:
    """What `sgd_learn` leaves to the Python steps (a label that is not a number, a stored
    weight that is not a float, an intercept that is not a number, a NaN on the way, weights
    that are not a dict): None, and nothing written; the steps then learn as River does."""
    sgd_learn = linear_learning.sgd_learn_in_c
    assert sgd_learn is not None
    loss = optim.losses.Log()
    x = {"a": 1.0, "b": 2.0, "new": 3.0}
    for change, label in (
        (None, "yes"),
        (None, None),
        ("weight", True),
        ("intercept", True),
        ("nan feature", True),
        ("dict weights", True),
    ):
        model = _trained(linear_model.LogisticRegression())
        scaler, glm = model["StandardScaler"], model["LogisticRegression"]
        weights, intercept, features = glm._weights.to_dict(), glm.intercept, dict(x)
        if change == "weight":
            weights["b"] = 1  # an int: River adds it as an int
        elif change == "intercept":
            intercept = "0.0"
        elif change == "nan feature":
            features["a"] = math.inf  # inf - inf: a NaN mean
            scaler.means["a"] = math.inf
        before, kept = state(model), dict(weights)
        args = [features, scaler.counts, scaler.means, scaler.vars, weights, intercept, label]
        if change == "dict weights":
            args[4] = glm._weights  # the VectorDict itself
        assert sgd_learn(*args, 1, loss, glm.clip_gradient, 0.01, 0.01) is None, change
        assert state(model) == before and weights == kept, change
    model = _trained(linear_model.LogisticRegression())
    scaler, glm = model["StandardScaler"], model["LogisticRegression"]
    with pytest.raises(TypeError, match="sgd_learn"):
        sgd_learn(x, scaler.counts, scaler.means, scaler.vars)


@pytest.mark.parametrize(
    ("model", "label"),
    [
        (lambda: linear_model.LinearRegression(clip_gradient=0, intercept_init=-0.0), 5.0),
        (lambda: linear_model.LogisticRegression(intercept_init=-0.0), 0.5),
        (lambda: linear_model.LogisticRegression(intercept_init=-0.0), -0.5),
        (
            lambda: linear_model.LogisticRegression(
                loss=optim.losses.Log(weight_pos=0), intercept_init=-0.0
            ),
            True,
        ),
    ],
)
def test_a_zero_that_river_keeps_an_int_has_river_s_sign(model: Any, label: Any) -> None:
    """Where River computes with ints, a zero has no sign: an int clip of 0 (its ``-clip`` is
    0), a label in (-1, 1) (``int(y)`` is 0), an int loss weight of 0. The step is then +0.0,
    and an intercept of -0.0 stays -0.0, as River leaves it."""
    ours, river = preprocessing.StandardScaler() | model(), preprocessing.StandardScaler() | model()
    fast = compile_learning(ours)
    assert isinstance(fast, LinearLearning)
    for x in ({"a": 1.0}, {"a": 3.0, "b": -1.0}):
        fast.learn_one(dict(x), label)
        river.learn_one(dict(x), label)
        assert state(ours) == state(river)


def test_a_scheduler_that_raises_leaves_river_s_state() -> None:
    """River reads the rates midway through a sample (the intercept's after the dot product
    stored the new weights, the weights' after the intercept's step): a scheduler that raises
    leaves what River leaves, with the same error."""

    def make() -> compose.Pipeline:
        return preprocessing.StandardScaler() | linear_model.LogisticRegression(
            intercept_lr=optim.schedulers.InverseScaling(0.1, power=400)
        )

    ours, river = make(), make()
    fast = compile_learning(ours)
    assert isinstance(fast, LinearLearning)
    raised = 0
    for i in range(8):
        x, y = {"a": float(i), f"n{i}": 1.0}, i % 2 == 0
        got, want = outcome(fast.learn_one, dict(x), y), outcome(river.learn_one, dict(x), y)
        assert got == want
        raised += got[0] == "raised"
        assert state(ours) == state(river)
    assert raised  # InverseScaling(power=400) overflows within these samples
