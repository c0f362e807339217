"""No valid event stops the learning core: whatever a model raises is counted, the other models
still learn, and an event no model could use is kept for the dead-letter topic.

The events are schema-valid (`schemas.events`): feature values are numbers, strings, booleans or
null; labels are booleans, numbers or strings. Many of them are wrong for some model (a string
where a scaler needs a number, ``"yes"`` as a binary label, 1e308), which used to crash the
learner for good: it exited, and a restart read the same event again.
"""

from __future__ import annotations

import pickle

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from learners.core import UNUSABLE_KEPT, LearningCore
from learners.specs import PRESETS, ModelSpec
from schemas.events import (
    EventCodec,
    FeatureEvent,
    FeatureValue,
    LabelEvent,
    Limits,
    Served,
    ShadowAnswer,
)

values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**18), 10**18),
    st.floats(allow_nan=False, allow_infinity=False),  # 1e308, 5e-324 and friends included
    st.sampled_from([1e308, -1e308, 5e-324, 0.0, -0.0]),
    st.text(max_size=5),
)
features = st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), values, max_size=4)
labels = st.one_of(
    st.booleans(), st.integers(-5, 5), st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["yes", "no", "", "1"]),
)  # fmt: skip
streams = st.lists(st.tuples(features, labels, st.integers(0, 3)), min_size=1, max_size=40)


def all_presets() -> list[ModelSpec]:
    return [ModelSpec(name, name) for name in PRESETS]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=streams)
def test_random_valid_events_never_stop_any_preset(stream) -> None:
    core = LearningCore(all_presets())
    for i, (x, y, delay) in enumerate(stream):
        core.push_feature(FeatureEvent(str(i), float(i), x), (0, 0), i)
        core.push_label(LabelEvent(str(i), float(i + delay), y), (1, 0), i)
        core.advance(float(i))
    core.flush()  # never raises
    counters = core.counters
    assert counters.features_processed == len(stream)
    assert counters.labels_joined == len(stream)
    # Every failure is accounted for, by model, stage and exception type.
    assert all(n > 0 and name in PRESETS for (name, _, _), n in core.model_errors.items())
    # The state still pickles (a snapshot can be taken) and the metrics are readable.
    restored = pickle.loads(pickle.dumps(core))
    for name in PRESETS:
        restored.metric_values(name)


def test_a_null_is_a_missing_feature() -> None:
    with_null, absent = LearningCore(all_presets()), LearningCore(all_presets())
    for i in range(30):
        x: dict[str, FeatureValue] = {"a": float(i % 7), "b": float(i % 3)}
        with_null.push_feature(FeatureEvent(str(i), i, {**x, "c": None}), (0, 0), i)
        absent.push_feature(FeatureEvent(str(i), i, x), (0, 0), i)
        for core in (with_null, absent):
            core.push_label(LabelEvent(str(i), i, i % 2 == 0), (1, 0), i)
    for core in (with_null, absent):
        core.flush()
    assert with_null.model_errors == {}
    for name in ("logreg", "hoeffding", "arf"):
        assert with_null.metric_values(name) == absent.metric_values(name)


def test_one_model_fails_the_others_learn_and_an_event_nobody_can_use_is_kept() -> None:
    """``logreg`` cannot use a string feature, the tree can; a label ``"yes"`` breaks the
    logistic regression's log loss but not the tree. Only an event that *every* model refuses
    is kept for the dead letters."""
    core = LearningCore([ModelSpec("lr", "logreg"), ModelSpec("tree", "hoeffding")])
    core.push_feature(FeatureEvent("s", 0, {"a": "red"}), (0, 0), 0)
    core.push_label(LabelEvent("s", 0, True), (1, 0), 0)
    core.flush()
    assert core.models["tree"].samples_learned == 1
    assert [(m, e) for (m, _stage, e) in core.model_errors] == [("lr", "TypeError")]
    assert core.drain_unusable() == []  # the tree used it

    solo = LearningCore([ModelSpec("lr", "logreg")])
    solo.push_feature(FeatureEvent("s", 0, {"a": "red"}), (0, 0), 0)
    solo.push_label(LabelEvent("s", 0, True), (1, 0), 0)
    solo.flush()
    [unusable] = solo.drain_unusable()  # here the prediction passed, learning failed
    assert (unusable.kind, unusable.id, unusable.to_event()) == (
        "label", "s", {"id": "s", "time": 0, "label": True},
    )  # fmt: skip
    assert unusable.errors[0].startswith("lr: TypeError")


def poisoned_stream() -> list[FeatureEvent | LabelEvent]:
    """Valid events with poison inside: a string feature, a label ``"yes"``, 1e308."""
    events: list[FeatureEvent | LabelEvent] = []
    for i in range(300):
        x: dict[str, object] = {"a": float(i % 5), "b": float((i * 7) % 11)}
        y: object = i % 3 == 0
        if i % 50 == 7:
            x["c"] = "red"  # a nominal feature: the tree takes it, the scaler cannot
        if i % 50 == 21:
            y = "yes"
        if i % 50 == 33:
            x["b"] = 1e308
        events.append(FeatureEvent(str(i), float(i), x))  # type: ignore[arg-type]
        events.append(LabelEvent(str(i), float(i + 3), y))  # type: ignore[arg-type]
    return events


def run(core: LearningCore, events: list[FeatureEvent | LabelEvent], start: int = 0) -> None:
    for offset, event in enumerate(events[start:], start):
        if isinstance(event, FeatureEvent):
            core.push_feature(event, (0, 0), offset)
        else:
            core.push_label(event, (1, 0), offset)
        core.advance(event.time - 3)


def test_poison_is_deterministic_so_a_restart_gives_the_same_models() -> None:
    """What a model does with a poison event is the same every time: a core restored from a
    pickle taken half-way (a crash, then a restart from the checkpoint) ends equal to an
    uninterrupted one, failures included. That is what keeps exactly-once with bad data."""
    specs = [ModelSpec("lr", "logreg", ("Accuracy", "LogLoss")), ModelSpec("tree", "hoeffding")]
    events = poisoned_stream()
    straight = LearningCore(specs)
    run(straight, events)
    straight.flush()

    first = LearningCore(specs)
    run(first, events[:301])
    restored: LearningCore = pickle.loads(pickle.dumps(first))  # buffered events included
    run(restored, events, 301)
    restored.flush()

    assert straight.model_errors == restored.model_errors
    assert sum(straight.model_errors.values()) >= 12  # the poison did hit
    assert ("tree", "learn", "LabelTypeError") in straight.model_errors  # "yes" refused
    for name in ("lr", "tree"):
        assert repr(straight.metric_values(name)) == repr(restored.metric_values(name))  # NaN
        a, b = straight.models[name], restored.models[name]
        assert a.samples_learned == b.samples_learned
        probes = [{"a": float(i), "b": float(i * 2 % 11)} for i in range(5)]
        assert [repr(a.model.predict_proba_one(x)) for x in probes] == [
            repr(b.model.predict_proba_one(x)) for x in probes
        ]
    # all but the six "yes" labels and the six 1e308 features its splitter overflows on
    assert straight.models["tree"].samples_learned == 288


def test_integers_past_the_floats_do_not_stop_comparisons() -> None:
    """A champion/challenger pair of regressors and a graph's shadows compare |y - prediction|:
    a label, or a served prediction, that is a JSON integer past the floats raised an
    OverflowError out of `LearningCore.advance`."""
    huge = 10**400
    compared = LearningCore(
        [ModelSpec("a", "linreg"), ModelSpec("b", "linreg")], compare=[("a", "b")]
    )
    compared.push_feature(FeatureEvent("1", 0.0, {"x": 1.0}), (0, 0), 0)
    compared.push_label(LabelEvent("1", 1.0, huge), (1, 0), 0)
    compared.flush()
    assert compared.comparisons[("a", "b")].stats.n == 0
    assert len(compared.drain_unusable()) == 1

    shadows = LearningCore([ModelSpec("r", "linreg")])
    served = Served("g", 1, huge, None, {"r": 1}, {"s": ShadowAnswer(2)})
    shadows.push_feature(FeatureEvent("1", 0.0, {"x": 1.0}, served), (0, 0), 0)
    shadows.push_label(LabelEvent("1", 1.0, 3), (1, 0), 0)
    shadows.flush()
    assert shadows.models["r"].samples_learned == 1
    [comparison] = shadows.served_comparisons.values()
    assert comparison.stats.n == 0


def unusable_features(core: LearningCore, n: int) -> None:
    for i in range(3):
        core.push_feature(FeatureEvent(str(i), float(i), {"x": float(i)}), (0, 0), i)
        core.push_label(LabelEvent(str(i), float(i), i % 2 == 0), (1, 0), i)
    core.advance(3.0)
    events = [FeatureEvent(f"p{i}", 3.0 + i, {"x": "red"}) for i in range(n)]
    core.push_features(events, (0, 0), list(range(3, 3 + n)))
    core.advance(1e9, max_labels=10_000)  # features are not bounded by max_labels


def test_unusable_events_past_the_bound_are_counted_or_all_kept() -> None:
    """Of 10 050 unusable events in one advance, 50 were dropped without a trace."""
    bounded = LearningCore([ModelSpec("m", "logreg")])
    unusable_features(bounded, 10_050)
    assert len(bounded.drain_unusable()) == UNUSABLE_KEPT
    assert bounded.unusable_dropped == 50
    everything = LearningCore([ModelSpec("m", "logreg")])
    everything.unusable_kept = None  # the learner's loop: it drains after every advance
    unusable_features(everything, 10_050)
    assert len(everything.drain_unusable()) == 10_050 and everything.unusable_dropped == 0


def test_an_unusable_feature_event_keeps_its_served_answer() -> None:
    """The dead letter of a logged answer's features no model could use lost the answer."""
    codec = EventCodec(Limits())
    core = LearningCore([ModelSpec("r", "linreg")])
    for i in range(3):  # a scaler that has seen numbers raises on a string
        core.push_feature(FeatureEvent(str(i), float(i), {"x": float(i)}), (0, 0), i)
        core.push_label(LabelEvent(str(i), float(i), float(i)), (1, 0), i)
    served = Served("r", 4, 1.5)
    event = FeatureEvent("p", 3.0, {"x": "red", "n": 12345678901234567890}, served)
    core.push_feature(event, (0, 3), 17)
    core.flush()
    [unusable] = core.drain_unusable()
    assert codec.decode_feature(orjson.dumps(unusable.to_event())) == event
