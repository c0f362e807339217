"""Graph evaluation: every node kind against a hand computation, with real River models where
the numbers matter (Phishing, 300 samples to learn, 100 to answer) and stubs where the routing
does."""

from __future__ import annotations

import itertools
import random
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from river import anomaly, datasets, linear_model, metrics, naive_bayes, preprocessing, tree

from learners import graph_eval
from learners.graph import (
    CompiledGraph,
    GraphAnswer,
    GraphInputError,
    MemberUnavailable,
    Predicts,
    StaticModels,
    compile_graph,
    evaluate,
    metric_weights,
    run_shadows,
    sticky_unit,
)
from learners.graph_context import Outcome
from learners.predictor import ServedModel
from schemas.graph_errors import GraphError
from schemas.graph_parser import parse_graph


@dataclass(frozen=True)
class Served:
    """The `Predicts` shape around a River estimator (as `ServedModel.predict` does it)."""

    name: str
    estimator: Any
    kind: str = "classifier"
    version: int = 1

    def predict(
        self, x: dict[str, Any], *, complete: bool = False
    ) -> tuple[Any, dict[Any, float] | None]:
        if self.kind == "classifier":
            return self.estimator.predict_one(x), self.estimator.predict_proba_one(x)
        if self.kind == "regressor":
            return self.estimator.predict_one(x), None
        return self.estimator.score_one(x), None


@dataclass(frozen=True)
class Stub:
    """A model answering ``answer(x)``; remembers the features it saw."""

    name: str
    answer: Callable[[dict[str, Any]], tuple[Any, dict[Any, float] | None]]
    kind: str = "classifier"
    version: int = 1
    seen: list[dict[str, Any]] = field(default_factory=list)

    def predict(
        self, x: dict[str, Any], *, complete: bool = False
    ) -> tuple[Any, dict[Any, float] | None]:
        self.seen.append(x)
        return self.answer(x)


def constant(name: str, value: Any, kind: str = "regressor", version: int = 1) -> Stub:
    return Stub(name, lambda x: (value, None), kind, version)


def threshold(name: str) -> Stub:
    """A classifier whose probability of True is feature ``p``."""
    return Stub(name, lambda x: (x["p"] >= 0.5, {False: 1 - x["p"], True: x["p"]}))


def boom(x: dict[str, Any]) -> tuple[Any, dict[Any, float] | None]:
    raise RuntimeError("shadow model failed")


def g(root: Any) -> CompiledGraph:
    return compile_graph(parse_graph({"name": "g", "root": root}))


# --- real River models ----------------------------------------------------------------------


@dataclass
class Trained:
    models: dict[str, Predicts]
    accuracy: dict[str, float]
    test: list[dict[str, Any]]
    estimators: dict[str, Any]


@pytest.fixture(scope="module")
def trained() -> Trained:
    data = list(itertools.islice(datasets.Phishing(), 400))
    estimators: dict[str, Any] = {
        "lr": preprocessing.StandardScaler() | linear_model.LogisticRegression(),
        "tree": tree.HoeffdingTreeClassifier(grace_period=50),
        "nb": naive_bayes.GaussianNB(),
    }
    accuracy = {name: metrics.Accuracy() for name in estimators}
    for x, y in data[:300]:
        for name, estimator in estimators.items():
            accuracy[name].update(y, estimator.predict_one(x))  # progressive validation
            estimator.learn_one(x, y)
    hst = preprocessing.MinMaxScaler() | anomaly.HalfSpaceTrees(seed=42)
    after = linear_model.LogisticRegression()
    for x, y in data[:300]:
        after.learn_one({**x, "anomaly": hst.score_one(x)}, y)
        hst.learn_one(x)
    estimators |= {"hst": hst, "after": after}
    models: dict[str, Predicts] = {
        name: Served(name, e, "anomaly" if name == "hst" else "classifier", version=i + 1)
        for i, (name, e) in enumerate(estimators.items())
    }
    scores = {name: m.get() for name, m in accuracy.items()}
    return Trained(models, scores, [x for x, _ in data[300:]], estimators)


def hand_mean(probas: list[dict[Any, float]], weights: list[float]) -> dict[Any, float]:
    labels = set().union(*probas)
    total = sum(weights)
    return {
        c: sum(w * p.get(c, 0.0) for p, w in zip(probas, weights, strict=True)) / total
        for c in labels
    }


def argmax(scores: dict[Any, float]) -> Any:
    return max(sorted(scores, key=repr), key=lambda c: scores[c])


MEMBERS = ("lr", "tree", "nb")


def member_probas(trained: Trained, x: dict[str, Any]) -> list[dict[Any, float]]:
    return [trained.estimators[name].predict_proba_one(x) for name in MEMBERS]


def test_ensemble_mean_is_the_mean_of_the_probabilities(trained: Trained) -> None:
    graph = g({"ensemble": {"members": list(MEMBERS)}})
    models = StaticModels(trained.models)
    differs = 0
    for x in trained.test:
        answer = evaluate(graph, x, models=models)
        probas = member_probas(trained, x)
        expected = hand_mean(probas, [1.0, 1.0, 1.0])
        assert answer.probabilities == pytest.approx(expected)
        assert answer.prediction == argmax(expected)
        assert answer.versions == {"lr": 1, "tree": 2, "nb": 3}
        assert (answer.kind, answer.decided_by, answer.path) == ("classifier", "root.ensemble", ())
        differs += any(p != expected for p in probas)
    assert differs > 50  # the members do not all say the same thing


def test_served_models_are_what_a_graph_calls(trained: Trained) -> None:
    served: dict[str, Predicts] = {
        name: ServedModel.build(name, trained.estimators[name], version=1 + i)
        for i, name in enumerate(MEMBERS)
    }
    graph = g({"ensemble": {"members": list(MEMBERS)}})
    for x in trained.test[:20]:
        answer = evaluate(graph, x, models=StaticModels(served))
        expected = evaluate(graph, x, models=StaticModels(trained.models))
        assert answer.as_dict() == expected.as_dict()


def test_ensemble_vote_is_the_majority(trained: Trained) -> None:
    graph = g({"ensemble": {"members": list(MEMBERS), "combine": "vote"}})
    models = StaticModels(trained.models)
    split_votes = 0
    for x in trained.test:
        votes = Counter(trained.estimators[name].predict_one(x) for name in MEMBERS)
        answer = evaluate(graph, x, models=models)
        assert answer.prediction == votes.most_common(1)[0][0]
        assert answer.probabilities == {label: n / 3 for label, n in votes.items()}
        split_votes += len(votes) > 1
    assert split_votes > 0


def test_ensemble_weighted_by_metric(trained: Trained) -> None:
    graph = g(
        {"ensemble": {"members": list(MEMBERS), "combine": "weighted", "weights": "by_metric"}}
    )
    models = StaticModels(trained.models, trained.accuracy)
    weights = [trained.accuracy[name] for name in MEMBERS]
    assert len(set(weights)) > 1 and all(0.5 < w < 1 for w in weights)
    unlike_mean = 0
    for x in trained.test:
        answer = evaluate(graph, x, models=models)
        expected = hand_mean(member_probas(trained, x), weights)
        assert answer.probabilities == pytest.approx(expected)
        assert answer.prediction == argmax(expected)
        unlike_mean += answer.probabilities != pytest.approx(
            hand_mean(member_probas(trained, x), [1.0, 1.0, 1.0]), rel=1e-9
        )
    assert unlike_mean > 0


def test_ensemble_weighted_by_fixed_weights(trained: Trained) -> None:
    graph = g({"ensemble": {"members": list(MEMBERS), "combine": "weighted", "weights": [3, 0, 1]}})
    for x in trained.test[:20]:
        answer = evaluate(graph, x, models=StaticModels(trained.models))
        assert answer.probabilities == pytest.approx(
            hand_mean(member_probas(trained, x), [3, 0, 1])
        )


@pytest.mark.parametrize(
    ("metrics", "weights"),
    [
        ({}, [1, 1, 1]),  # no metric yet: equal weights
        ({"a": 0.0, "b": -2.0, "c": float("nan")}, [1, 1, 1]),
        ({"a": 3.0, "c": 1.0}, [3, 0, 1]),  # a member without a metric weighs 0
    ],
)
def test_metric_weights_edge_cases(metrics: dict[str, float], weights: list[float]) -> None:
    models = StaticModels(
        {n: constant(n, v) for n, v in zip("abc", (1.0, 2.0, 4.0), strict=True)}, metrics
    )
    graph = g(
        {"ensemble": {"members": ["a", "b", "c"], "combine": "weighted", "weights": "by_metric"}}
    )
    expected = sum(w * v for w, v in zip(weights, (1.0, 2.0, 4.0), strict=True)) / sum(weights)
    assert evaluate(graph, {}, models=models).prediction == pytest.approx(expected)


def test_numeric_ensembles_and_ties() -> None:
    models = StaticModels(
        {
            "a": constant("a", 1.0),
            "b": constant("b", 2.0),
            "none": constant("none", None),  # an untrained regressor abstains
            "yes": constant("yes", True, "classifier"),
            "no": constant("no", False, "classifier"),
            "s1": constant("s1", 0.2, "anomaly"),
            "s2": constant("s2", 0.6, "anomaly"),
        }
    )
    assert (
        evaluate(g({"ensemble": {"members": ["a", "b", "none"]}}), {}, models=models).prediction
        == 1.5
    )
    answer = evaluate(g({"ensemble": {"members": ["s1", "s2"]}}), {}, models=models)
    assert (answer.prediction, answer.kind) == (pytest.approx(0.4), "anomaly")
    for combine in ("mean", "vote"):  # a tie goes to the label whose repr sorts first
        tie = evaluate(
            g({"ensemble": {"members": ["yes", "no"], "combine": combine}}), {}, models=models
        )
        assert (tie.prediction, tie.probabilities) == (False, {True: 0.5, False: 0.5})
    with pytest.raises(GraphError, match=r"^root\.ensemble: members mix classifier, regressor"):
        evaluate(g({"ensemble": {"members": ["a", "yes"]}}), {}, models=models)


LABELS = [False, True, 0, 1, "a", "b", 2.5, ("a", 1)]  # a tuple: left to Python
NUMBERS = (
    st.sampled_from([0.0, 0.25, 0.5, 1.0, -0.0, 1, 3]) | st.floats(0, 1) | st.floats(allow_nan=True)
)
outcomes = st.builds(
    lambda prediction, proba, kind, plain: (tuple if plain else Outcome._make)(
        (prediction, proba, kind, "m", None, None)
    ),
    st.sampled_from([None, *LABELS]),
    st.none() | st.dictionaries(st.sampled_from(LABELS), NUMBERS, max_size=4),
    st.sampled_from(["classifier", "classifier", "classifier", "regressor"]),
    st.sampled_from([False] * 9 + [True]),  # a plain tuple: no `kind` (Python's error)
)


def test_the_c_mean_is_built() -> None:
    """The test below compares both means; without the extension it would compare Python's
    twice."""
    assert graph_eval.mean_probabilities_in_c is not None, "pip install -e . again to build it"


@settings(max_examples=500, deadline=None)
@given(
    outs=st.lists(outcomes, min_size=1, max_size=4),
    how=st.sampled_from(["mean", "weighted"]),
    weights=st.none() | st.lists(NUMBERS | st.booleans(), min_size=1, max_size=5),
)
def test_an_ensembles_mean_in_c_is_pythons_to_the_bit(
    outs: list[Outcome], how: str, weights: list[float] | None
) -> None:
    """`combine` in C (`learners/_ensemble_pass.c`) answers what its Python loop answers: the
    same prediction, the same probabilities (key objects, order, bits), or the same error;
    ties, abstaining members, regressors, NaN and weights of another length included."""

    def combined() -> tuple[str, ...]:
        try:
            out = graph_eval.combine(outs, how, weights, "root.ensemble")
        except (GraphError, ValueError, TypeError, AttributeError) as exc:
            return (type(exc).__name__, str(exc))
        proba = None if out.probabilities is None else list(out.probabilities.items())
        return (repr(out.prediction), repr(proba), out.kind, out.decided_by)

    in_c = combined()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(graph_eval, "mean_probabilities_in_c", None)
        assert combined() == in_c


# --- sequence -------------------------------------------------------------------------------


def test_sequence_passes_the_anomaly_score_on(trained: Trained) -> None:
    graph = g({"sequence": {"steps": [{"model": "hst", "as": "anomaly"}, "after"]}})
    hst, after = trained.estimators["hst"], trained.estimators["after"]
    for x in trained.test[:30]:
        before = dict(x)
        answer = evaluate(graph, x, models=StaticModels(trained.models))
        fed = {**x, "anomaly": hst.score_one(x)}
        assert answer.probabilities == pytest.approx(after.predict_proba_one(fed))
        assert answer.prediction == after.predict_one(fed)
        assert answer.versions == {"hst": 4, "after": 5}
        assert answer.decided_by == "root.sequence.steps[1]"
        assert x == before  # the caller's features are untouched


def test_sequence_feeds_a_classifiers_positive_probability(trained: Trained) -> None:
    seen = constant("seen", 0.0)
    models = StaticModels({**trained.models, "seen": seen})
    graph = g({"sequence": {"steps": ["lr", {"model": "nb", "as": "p_nb"}, "seen"]}})
    x = trained.test[0]
    evaluate(graph, x, models=models)
    lr, nb = trained.estimators["lr"], trained.estimators["nb"]
    after_lr = {**x, "lr": lr.predict_proba_one(x)[True]}
    assert seen.seen[-1] == {**after_lr, "p_nb": nb.predict_proba_one(after_lr)[True]}
    untrained = StaticModels({"none": constant("none", None), "seen": seen})
    evaluate(g({"sequence": {"steps": ["none", "seen"]}}), {"none": 5, "k": 1}, models=untrained)
    assert seen.seen[-1] == {"k": 1}  # an output of None removes the feature


# --- rules ----------------------------------------------------------------------------------

RULES = {
    "rules": {
        "over": "risk",
        "rules": [
            {
                "when": {"output": "proba.True", "ge": 0.9},
                "then": {"decision": "block", "reason": "very likely fraud"},
            },
            {
                "when": {
                    "all": [
                        {"feature": "amount", "gt": 1000},
                        {"output": "prediction", "eq": False},
                    ]
                },
                "then": {"decision": "review", "prediction": True},
            },
        ],
    }
}


@pytest.mark.parametrize(
    ("x", "prediction", "decision", "reason", "decided_by"),
    [
        ({"p": 0.95, "amount": 10}, True, "block", "very likely fraud", "root.rules.rules[0]"),
        ({"p": 0.2, "amount": 5000}, True, "review", None, "root.rules.rules[1]"),  # overridden
        ({"p": 0.2, "amount": 10}, False, None, None, "root.rules.over"),  # no rule matches
        ({"p": 0.6, "amount": 5000}, True, None, None, "root.rules.over"),
        ({"p": 0.2}, False, None, None, "root.rules.over"),  # amount missing
    ],
)
def test_each_rule_outcome(
    x: dict[str, Any], prediction: Any, decision: str | None, reason: str | None, decided_by: str
) -> None:
    answer = evaluate(g(RULES), x, models=StaticModels({"risk": threshold("risk")}))
    assert (answer.prediction, answer.decision, answer.reason) == (prediction, decision, reason)
    assert answer.decided_by == decided_by
    assert answer.path == ((decided_by,) if decision else ())
    if decided_by == "root.rules.rules[1]":  # the rule's prediction: its probabilities agree
        assert answer.probabilities == {False: 0.0, True: 1.0}
    else:  # the model's view stays
        assert answer.probabilities == {False: 1 - x["p"], True: x["p"]}


OVERRIDE = {"when": {"feature": "amount", "gt": 1000}, "then": {"decision": "block", "prediction": True}}  # fmt: skip


@pytest.mark.parametrize("combine", ["mean", "vote"])
def test_a_rule_decision_inside_an_ensemble_reaches_the_answer(combine: str) -> None:
    """A member whose rule overrides its prediction counts with that prediction (probability 1)
    and the ensemble answers with the rule's decision, as every other node passes it on."""
    models = StaticModels(
        {"lr": Stub("lr", lambda x: (False, {False: 0.9, True: 0.1})), "tree": threshold("tree")}
    )
    rules = {"rules": {"over": "lr", "rules": [OVERRIDE]}}
    graph = g({"ensemble": {"members": [rules, "tree", "tree"][: 2 if combine == "mean" else 3], "combine": combine}})  # fmt: skip
    answer = evaluate(graph, {"amount": 5000, "p": 0.4}, models=models)
    assert answer.path == ("root.ensemble.members[0].rules.rules[0]",)
    assert (answer.decision, answer.decided_by) == ("block", "root.ensemble")
    if combine == "mean":  # (1 + 0.4) / 2 for True
        assert answer.prediction is True
        assert answer.probabilities == pytest.approx({False: 0.3, True: 0.7})
    else:  # True (the rule) against False twice
        assert (answer.prediction, answer.probabilities) == (False, {True: 1 / 3, False: 2 / 3})
    quiet = evaluate(graph, {"amount": 10, "p": 0.4}, models=models)
    assert (quiet.decision, quiet.path, quiet.prediction) == (None, (), False)


# --- switch ---------------------------------------------------------------------------------

SWITCH = {
    "switch": {
        "cases": [
            {"when": {"feature": "country", "eq": "FR"}, "then": "fr"},
            {"when": {"feature": "amount", "gt": 1000}, "then": {"model": "big"}},
        ],
        "default": "global",
    }
}
ROUTES = {"fr": constant("fr", 1.0), "big": constant("big", 2.0), "global": constant("global", 3.0)}


@pytest.mark.parametrize(
    ("x", "prediction", "path", "decided_by"),
    [
        (
            {"country": "FR", "amount": 5000},
            1.0,
            "root.switch.cases[0]",
            "root.switch.cases[0].then",
        ),
        (
            {"country": "DE", "amount": 5000},
            2.0,
            "root.switch.cases[1]",
            "root.switch.cases[1].then",
        ),
        ({"country": "DE", "amount": 10}, 3.0, "root.switch.default", "root.switch.default"),
        ({}, 3.0, "root.switch.default", "root.switch.default"),
    ],
)
def test_switch_branches(x: dict[str, Any], prediction: float, path: str, decided_by: str) -> None:
    answer = evaluate(g(SWITCH), x, models=StaticModels(ROUTES))
    assert (answer.prediction, answer.path, answer.decided_by) == (prediction, (path,), decided_by)
    assert list(answer.versions) == [{1.0: "fr", 2.0: "big", 3.0: "global"}[prediction]]
    # the outcome and context the HTTP route writes its answer from are that answer
    out, ctx = g(SWITCH).outcome(x, models=StaticModels(ROUTES))
    assert ctx.answer(out) == answer


def test_missing_member_raises_only_when_needed() -> None:
    models = StaticModels({"fr": ROUTES["fr"]})
    assert evaluate(g(SWITCH), {"country": "FR"}, models=models).prediction == 1.0
    with pytest.raises(MemberUnavailable) as info:
        evaluate(g(SWITCH), {"country": "DE"}, models=models)
    assert (info.value.name, info.value.path) == ("global", "root.switch.default")
    assert str(info.value) == 'model "global" is not loaded (root.switch.default)'


# --- split ----------------------------------------------------------------------------------

SPLIT = {
    "split": {
        "branches": [
            {"weight": 70, "node": "a"},
            {"weight": 0, "node": "never"},
            {"weight": 20, "node": "b"},
            {"weight": 10, "node": "c"},
        ]
    }
}
ABC = StaticModels({n: constant(n, float(i)) for i, n in enumerate(["a", "never", "b", "c"])})


def test_split_shares_are_within_two_percent_of_the_weights() -> None:
    graph = g(SPLIT)
    counts = Counter(
        evaluate(graph, {}, models=ABC, request_id=f"user-{i}").path[0] for i in range(10_000)
    )
    shares = {path: n / 10_000 for path, n in counts.items()}
    assert set(shares) == {
        "root.split.branches[0]",
        "root.split.branches[2]",
        "root.split.branches[3]",
    }
    assert shares["root.split.branches[0]"] == pytest.approx(0.70, abs=0.02)
    assert shares["root.split.branches[2]"] == pytest.approx(0.20, abs=0.02)
    assert shares["root.split.branches[3]"] == pytest.approx(0.10, abs=0.02)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30) | st.integers().map(str))
def test_split_is_sticky_and_reproducible(request_id: str) -> None:
    first = evaluate(g(SPLIT), {}, models=ABC, request_id=request_id)
    again = evaluate(
        CompiledGraph(parse_graph({"name": "h", "root": SPLIT})),
        {},
        models=ABC,
        request_id=request_id,
    )
    assert first.path == again.path
    index = bisect_right([0.7, 0.7, 0.9, 1.0], sticky_unit("root.split", request_id))
    assert first.path == (f"root.split.branches[{index}]",)


def test_split_by_feature_falls_back_to_the_request_id() -> None:
    by_user = g({"split": {**SPLIT["split"], "sticky_by": "user"}})
    by_id = g(SPLIT)
    for i in range(200):
        paths = {
            evaluate(by_user, {"user": i}, models=ABC, request_id=f"r{j}").path for j in range(5)
        }
        assert len(paths) == 1  # one user, one branch, whatever the request
        fallback = evaluate(by_user, {"user": None}, models=ABC, request_id=f"r{i}")
        assert fallback.path == evaluate(by_id, {}, models=ABC, request_id=f"r{i}").path
    with pytest.raises(GraphInputError, match="feature 'user' or a request id"):
        evaluate(by_user, {}, models=ABC)
    with pytest.raises(GraphInputError, match="a request id is needed"):
        evaluate(by_id, {"user": 1}, models=ABC)


def test_split_by_feature_hashes_a_whole_float_as_its_int() -> None:
    """A user id sent as a JSON integer (v1) or as an FP64 tensor (v2) keeps its branch."""
    by_user = g({"split": {**SPLIT["split"], "sticky_by": "user"}})
    for i in range(-50, 1000):
        as_int = evaluate(by_user, {"user": i}, models=ABC).path
        assert evaluate(by_user, {"user": float(i)}, models=ABC).path == as_int
        assert evaluate(by_user, {"user": str(i)}, models=ABC).path == as_int
    assert sticky_unit("s", 2.5) == sticky_unit("s", "2.5")  # not a whole number: as written
    assert sticky_unit("s", True) == sticky_unit("s", "True") != sticky_unit("s", 1)


def test_nested_splits_and_salts_are_independent() -> None:
    half = {"branches": [{"weight": 1, "node": "a"}, {"weight": 1, "node": "b"}]}
    nested = g(
        {
            "split": {
                "branches": [{"weight": 1, "node": {"split": half}}, {"weight": 1, "node": "c"}]
            }
        }
    )
    inner = Counter(
        answer.path[1]
        for i in range(4000)
        if len((answer := evaluate(nested, {}, models=ABC, request_id=str(i))).path) == 2
    )
    assert sum(inner.values()) == pytest.approx(2000, abs=150)
    assert inner.most_common()[0][1] / sum(inner.values()) == pytest.approx(0.5, abs=0.05)
    salted = g({"split": {**SPLIT["split"], "salt": "experiment-2"}})
    moved = sum(
        evaluate(salted, {}, models=ABC, request_id=str(i)).path[0][-3:]
        != evaluate(g(SPLIT), {}, models=ABC, request_id=str(i)).path[0][-3:]
        for i in range(1000)
    )
    assert moved > 300  # another salt, another assignment


# --- shadow ---------------------------------------------------------------------------------


def shadow_models() -> StaticModels:
    return StaticModels(
        {
            "primary": threshold("primary"),
            "other": Stub("other", lambda x: (True, {True: 1.0}), version=9),
            "boom": Stub("boom", boom),
        }
    )


@settings(max_examples=100, deadline=None)
@given(st.floats(0, 1), st.one_of(st.none(), st.text(max_size=8)), st.floats(0, 100))
def test_shadow_never_changes_the_answer(p: float, request_id: str | None, percent: float) -> None:
    models = shadow_models()
    shadowed = g(
        {"shadow": {"primary": "primary", "shadows": ["other", "boom", "gone"], "percent": percent}}
    )
    answer = evaluate(shadowed, {"p": p}, models=models, request_id=request_id)
    alone = evaluate(g("primary"), {"p": p}, models=models, request_id=request_id)
    assert (answer.prediction, answer.probabilities, answer.versions, answer.path) == (
        alone.prediction,
        alone.probabilities,
        alone.versions,
        alone.path,
    )
    for result in run_shadows(answer, {"p": p}, models):  # raises nothing
        assert (result.answer is None) == (result.error is not None)


def test_shadow_results_capture_errors() -> None:
    models = shadow_models()
    graph = g({"shadow": {"primary": "primary", "shadows": ["other", "boom", "gone"]}})
    answer = evaluate(graph, {"p": 0.2}, models=models)  # percent 100: no request id needed
    assert [s.path for s in answer.shadows] == [f"root.shadow.shadows[{i}]" for i in range(3)]
    other, failed, gone = run_shadows(answer, {"p": 0.2}, models)
    assert isinstance(other.answer, GraphAnswer) and other.error is None
    assert (other.answer.prediction, other.answer.versions, other.agrees) == (
        True,
        {"other": 9},
        False,
    )
    assert isinstance(failed.error, RuntimeError) and failed.answer is None
    assert failed.agrees is None and failed.seconds >= 0
    assert isinstance(gone.error, MemberUnavailable) and gone.error.name == "gone"


def test_shadow_percent_samples_request_ids() -> None:
    models = shadow_models()
    graph = g({"shadow": {"primary": "primary", "shadows": ["other"], "percent": 25}})
    sampled = sum(
        bool(evaluate(graph, {"p": 0.5}, models=models, request_id=f"q{i}").shadows)
        for i in range(10_000)
    )
    assert sampled / 10_000 == pytest.approx(0.25, abs=0.02)
    never = g({"shadow": {"primary": "primary", "shadows": ["other"], "percent": 0}})
    assert not evaluate(never, {"p": 0.5}, models=models, request_id="q1").shadows


def test_shadow_percent_draws_for_requests_without_an_id() -> None:
    """``percent`` is a share of requests: one without an id is sampled by a random draw (the
    graph's ``draw``), not never."""
    models = shadow_models()
    spec = parse_graph(
        {
            "name": "g",
            "root": {"shadow": {"primary": "primary", "shadows": ["other"], "percent": 25}},
        }
    )
    draws = iter([0.2, 0.3, 0.249, 0.25])
    scripted = CompiledGraph(spec, draw=lambda: next(draws))
    sampled = [bool(scripted.evaluate({"p": 0.5}, models=models).shadows) for _ in range(4)]
    assert sampled == [True, False, True, False]
    # with an id, its hash decides (the draws are used up: a draw would raise StopIteration)
    for i in range(20):
        sticky = sticky_unit("root.shadow", f"q{i}") < 0.25
        shadows = scripted.evaluate({"p": 0.5}, models=models, request_id=f"q{i}").shadows
        assert bool(shadows) is sticky
    seeded = CompiledGraph(spec, draw=random.Random(7).random)
    share = sum(bool(seeded.evaluate({"p": 0.5}, models=models).shadows) for _ in range(10_000))
    assert share / 10_000 == pytest.approx(0.25, abs=0.02)
    again = CompiledGraph(spec, draw=random.Random(7).random)
    assert share == sum(
        bool(again.evaluate({"p": 0.5}, models=models).shadows) for _ in range(10_000)
    )


def test_shadow_agreement_is_with_its_own_primary() -> None:
    """A shadow agrees or not with its shadow node's primary, not with the graph's answer (a
    rule above it, an ensemble around it)."""
    models = StaticModels(
        {
            "lr": Stub("lr", lambda x: (False, {False: 0.6, True: 0.4})),
            "tree": Stub("tree", lambda x: (False, {False: 0.7, True: 0.3})),
            "two": constant("two", 2.0),
            "also_two": constant("also_two", 2.0),
            "four": constant("four", 4.0),
        }
    )
    shadow = {"shadow": {"primary": "lr", "shadows": ["tree"]}}
    ruled = g({"rules": {"over": shadow, "rules": [{**OVERRIDE, "then": {"decision": "review", "prediction": True}}]}})  # fmt: skip
    answer = evaluate(ruled, {"amount": 5000}, models=models)
    assert answer.prediction is True  # the rule's; the shadow node's primary said False
    (result,) = run_shadows(answer, {"amount": 5000}, models)
    assert result.answer is not None and result.answer.prediction is False
    assert result.agrees is True
    shadowed = {"shadow": {"primary": "two", "shadows": ["also_two"]}}
    mean = g({"ensemble": {"members": [shadowed, "four"]}})
    answer = evaluate(mean, {}, models=models)
    assert answer.prediction == 3.0
    assert [r.agrees for r in run_shadows(answer, {}, models)] == [True]


def test_shadow_inside_a_sequence_sees_the_fed_features() -> None:
    seen = constant("seen", 0.0)
    models = StaticModels(
        {"primary": threshold("primary"), "other": threshold("other"), "seen": seen}
    )
    graph = g(
        {
            "sequence": {
                "steps": [
                    {"model": "primary", "as": "risk"},
                    {"shadow": {"primary": "other", "shadows": ["seen"]}},
                ]
            }
        }
    )
    answer = evaluate(graph, {"p": 0.8}, models=models)
    assert answer.versions == {"primary": 1, "other": 1}
    (result,) = run_shadows(answer, {"p": 0.8}, models)
    assert result.error is None and seen.seen == [{"p": 0.8, "risk": 0.8}]


# --- one version per request, speed ---------------------------------------------------------


@dataclass
class Swapping:
    """A lookup whose model gets a new version at every `get`."""

    gets: int = 0

    def get(self, name: str) -> Predicts | None:
        self.gets += 1
        return constant(name, 1.0, version=self.gets)

    def metric(self, name: str) -> float | None:
        return None

    def weights(self, names: tuple[str, ...]) -> list[float]:
        return metric_weights(self, names)


def test_a_request_uses_one_version_of_each_model() -> None:
    lookup = Swapping()
    graph = g({"ensemble": {"members": ["a", {"model": "a"}, {"sequence": {"steps": ["a", "b"]}}]}})
    answer = evaluate(graph, {}, models=lookup)
    assert lookup.gets == 2 and answer.versions == {"a": 1, "b": 2}


@dataclass(frozen=True)
class Fixed:
    name: str
    kind: str = "regressor"
    version: int = 1

    def predict(
        self, x: dict[str, Any], *, complete: bool = False
    ) -> tuple[Any, dict[Any, float] | None]:
        return 1.0, None


def test_an_evaluation_runs_only_what_was_compiled() -> None:
    """Everything a request does not change is done once, by `compile_graph`: an evaluation
    parses and compiles nothing, and its Python calls are the nodes', the conditions', the
    lookups' and the models' own, a bounded few (its cost in microseconds is
    bench/graph_predict.py's, not a unit test's)."""
    import sys
    from types import FrameType

    root = {"switch": {**SWITCH["switch"], "default": {"ensemble": {"members": list(ROUTES)}}}}
    spec = parse_graph({"name": "g", "root": root})
    graph = compile_graph(spec)
    assert compile_graph(spec) is graph
    fixed = {name: Fixed(name) for name in ROUTES}
    models, x = StaticModels(fixed), {"country": "DE", "amount": 10}
    assert evaluate(spec, x, models=models).versions == dict.fromkeys(ROUTES, 1)

    called: list[tuple[str, str]] = []

    def record(frame: FrameType, event: str, _: object) -> None:
        if event == "call":
            called.append((frame.f_code.co_filename, frame.f_code.co_qualname))

    sys.setprofile(record)
    try:
        answer = graph.evaluate(x, models=models)
    finally:
        sys.setprofile(None)
    assert answer.prediction == 1.0 and answer.path == ("root.switch.default",)
    names = [name for _, name in called]
    assert not [n for n in names if "compile" in n or "parse" in n], names
    assert not [f for f, _ in called if "/schemas/" in f], called  # no spec read again
    assert names.count("Fixed.predict") == len(ROUTES)
    # 22 today: evaluate, outcome, the context, the switch and its two conditions (7 calls),
    # the ensemble (2), each member's runner, lookup and predict (9), combine, its outcome, the
    # answer (3); a few more may come, a per-request compilation or walk may not
    assert len(called) <= 26, names


# --- answers the caller gives (the models alone read the features) ---------------------------

OUTPUT_RULES = [
    {"when": {"any": [{"output": "proba.true", "ge": 0.9}, {"not": {"output": "prediction", "eq": True}}]},
     "then": {"decision": "look"}},
    {"when": {"all": [{"output": "proba.true", "lt": 0.4}]}, "then": {"decision": "allow", "prediction": False}},
]  # fmt: skip
ALONE: dict[str, tuple[Any, tuple[str, ...]]] = {
    "one": ("lr", ("lr",)),
    "vote": ({"ensemble": {"members": ["nb", "lr", "nb"], "combine": "vote"}}, ("nb", "lr")),
    "rules": (
        {"rules": {
            "over": {"ensemble": {"members": ["tree", "lr", {"rules": {"over": "nb", "rules": OUTPUT_RULES}}],
                                  "combine": "weighted", "weights": [1, 2, 3]}},
            "rules": OUTPUT_RULES,
        }},
        ("tree", "lr", "nb"),
    ),
}  # fmt: skip
FEATURE_RULE = {
    "when": {"all": [{"not": {"feature": "https", "gt": 0}}]},
    "then": {"decision": "x"},
}
NOT_ALONE = [
    {"rules": {"over": "lr", "rules": [*OUTPUT_RULES, FEATURE_RULE]}},
    {"ensemble": {"members": ["lr", {"rules": {"over": "nb", "rules": [FEATURE_RULE]}}]}},
    {"sequence": {"steps": ["hst", "after"]}},
    {"switch": {"cases": [{"when": {"feature": "https", "eq": 1}, "then": "lr"}], "default": "nb"}},
    {"split": {"branches": [{"weight": 1, "node": "lr"}, {"weight": 1, "node": "nb"}]}},
    {"shadow": {"primary": "lr", "shadows": ["nb"]}},
]


def test_models_alone_names_the_models_of_graphs_that_read_no_feature_themselves() -> None:
    for root, names in ALONE.values():
        assert g(root).models_alone == names
    for root in NOT_ALONE:
        assert g(root).models_alone is None, root


def test_answers_given_by_the_caller_are_the_answers_of_the_features(trained: Trained) -> None:
    """A caller that works out each model's answer itself (from the request's bytes, in
    `serving.graph_service`) gets the evaluation the features give, with no features at all."""
    models = StaticModels(trained.models, trained.accuracy)
    for root, names in ALONE.values():
        graph = g(root)
        for x in trained.test[:40]:
            given = {name: trained.models[name].predict(x) for name in names}
            out, ctx = graph.outcome({}, models=models, complete=True, given=given)
            answer = ctx.answer(out)
            assert answer == graph.evaluate(x, models=models)
            assert tuple(answer.versions) == names  # the order an answer names them in
    with pytest.raises(MemberUnavailable):  # a model given is still looked up (and pinned)
        g("lr").outcome({}, models=StaticModels({}), given=given)
