"""Graph documents: `parse_graph` errors name the path; the published JSON Schema agrees."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from learners.conditions import compile_condition
from schemas.graph_errors import GraphError
from schemas.graph_parser import parse_graph
from schemas.graphs import (
    Comparison,
    EnsembleNode,
    ModelNode,
    RulesNode,
    graph_to_dict,
)

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "schemas" / "jsonschema" / "graph.json").read_text()
)
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
KNOWN = ("lr", "tree", "nb", "hst", "after")


def graph(root: Any, **extra: Any) -> dict[str, Any]:
    return {"name": "g", "root": root, **extra}


def schema_accepts(doc: Any) -> bool:
    return VALIDATOR.is_valid(doc)


VALID = [
    graph("lr"),
    graph({"model": "lr", "as": "score"}, description="just one model"),
    graph({"sequence": {"steps": [{"model": "hst", "as": "anomaly"}, "after"]}}),
    graph({"ensemble": {"members": ["lr", "tree", "nb"], "combine": "vote"}}),
    graph({"ensemble": {"members": ["lr", "tree"], "combine": "weighted", "weights": [2, 0.5]}}),
    graph({"ensemble": {"members": ["lr", "tree"], "combine": "weighted", "weights": "by_metric"}}),
    graph(
        {
            "rules": {
                "over": {"ensemble": {"members": ["lr", "tree"]}},
                "rules": [
                    {
                        "when": {"output": "proba.True", "ge": 0.9},
                        "then": {"decision": "block", "reason": "very likely"},
                    },
                    {
                        "when": {
                            "all": [
                                {"feature": "amount", "gt": 5000},
                                {"not": {"feature": "country", "in": ["FR", "DE", 1, 2.5]}},
                                {"any": [{"feature": "x", "is_missing": True}]},
                            ]
                        },
                        "then": {"decision": "review", "prediction": True},
                    },
                ],
            }
        }
    ),
    graph(
        {
            "switch": {
                "cases": [{"when": {"feature": "country", "eq": "FR"}, "then": "lr"}],
                "default": {
                    "split": {
                        "branches": [{"weight": 9, "node": "lr"}, {"weight": 1, "node": "tree"}]
                    }
                },
            }
        }
    ),
    graph(
        {
            "split": {
                "branches": [{"weight": 1, "node": "lr"}, {"weight": 0, "node": "tree"}],
                "sticky_by": "user",
                "salt": "experiment-7",
            }
        }
    ),
    graph(
        {
            "shadow": {
                "primary": "lr",
                "shadows": ["tree", {"ensemble": {"members": ["nb"]}}],
                "percent": 12.5,
            }
        }
    ),
]


@pytest.mark.parametrize("doc", VALID)
def test_valid_documents_parse_validate_and_round_trip(doc: dict[str, Any]) -> None:
    spec = parse_graph(doc, KNOWN)
    assert schema_accepts(doc), list(VALIDATOR.iter_errors(doc))
    dumped = graph_to_dict(spec)
    assert schema_accepts(dumped)
    assert parse_graph(json.loads(json.dumps(dumped)), KNOWN) == spec


def test_the_dataclasses() -> None:
    spec = parse_graph(VALID[6], KNOWN)
    assert isinstance(spec.root, RulesNode)
    assert spec.root.over == EnsembleNode((ModelNode("lr"), ModelNode("tree")))
    assert spec.root.rules[0].when == Comparison("output", "proba.True", "ge", 0.9)
    assert spec.root.rules[1].then.prediction is True
    assert spec.model_names() == ("lr", "tree")
    assert parse_graph(VALID[1]).description == "just one model"


def deep(levels: int) -> Any:
    node: Any = "lr"
    for _ in range(levels):
        node = {"sequence": {"steps": [node]}}
    return node


def rule(when: Any, then: Any = None) -> dict[str, Any]:
    """A rules node over ``lr`` with one rule."""
    return {"rules": {"over": "lr", "rules": [{"when": when, "then": then or {"decision": "d"}}]}}


def case(when: Any) -> dict[str, Any]:
    """A switch node with one case."""
    return {"switch": {"cases": [{"when": when, "then": "lr"}], "default": "nb"}}


def ensemble(*members: Any, **fields: Any) -> dict[str, Any]:
    return {"ensemble": {"members": list(members), **fields}}


OVER = {
    "rules": {
        "over": ensemble("lr", "tre"),
        "rules": [rule({"feature": "a", "eq": 1})["rules"]["rules"][0]],
    }
}
R0 = "root.rules.rules[0]"
SPLIT1 = {"branches": [{"weight": 1, "node": "lr"}]}
# (document, path, the detail's beginning, whether the JSON Schema rejects it too)
INVALID: list[tuple[Any, str, str, bool]] = [
    (graph(OVER), "root.rules.over.ensemble.members[1]", 'unknown model "tre" (did you mean "tree"?)', False),
    (graph({"model": "forest"}), "root.model", 'unknown model "forest"', False),
    (graph("bad name"), "root", "invalid model name 'bad name'", True),
    ({"name": "no spaces", "root": "lr"}, "name", "invalid graph name", True),
    ({"root": "lr"}, "graph", "missing key 'name'", True),
    (graph("lr", owner="me"), "graph", "unknown key 'owner'", True),
    (graph({"ensembel": {"members": ["lr"]}}), "root", "expected a model name or a mapping", True),
    (graph(ensemble()), "root.ensemble.members", "expected a non-empty list", True),
    (graph(ensemble("lr", combine="avg")), "root.ensemble.combine", "expected one of", True),
    (graph(ensemble("lr", weights=[1])), "root.ensemble.weights", "weights only apply", True),
    (graph(ensemble("lr", combine="weighted")), "root.ensemble", "combine: weighted needs", True),
    (graph(ensemble("lr", "nb", combine="weighted", weights=[1])), "root.ensemble.weights", 'expected "by_metric" or a list of 2', False),
    (graph(ensemble("lr", combine="weighted", weights=[-1])), "root.ensemble.weights[0]", "expected a finite number ≥ 0", True),
    (graph(ensemble("lr", "nb", combine="weighted", weights=[0, 0])), "root.ensemble.weights", "weights must not all be zero", True),
    (graph(ensemble(ensemble("lr"), combine="weighted", weights="by_metric")), "root.ensemble.members[0]", "weights: by_metric needs models", True),
    (graph({"sequence": {"steps": [ensemble("lr"), "nb"]}}), "root.sequence.steps[0]", "only a model can feed", False),
    (graph({"switch": {"cases": [{"when": {"feature": "a", "eq": 1}, "then": "lr"}]}}), "root.switch", "missing key 'default'", True),
    (graph(case({"all": [{"output": "prediction", "eq": 1}]})), "root.switch.cases[0].when.all[0].output", "only a rule can test an output", True),
    (graph(rule({"feature": "a", "gt": 1, "lt": 3})), f"{R0}.when", "expected exactly one operator", True),
    (graph(rule({"feature": "a"})), f"{R0}.when", "expected exactly one operator", True),
    (graph(rule({"feature": "a", "gt": "5"})), f"{R0}.when.gt", "expected a finite number", True),
    (graph(rule({"feature": "a", "gt": True})), f"{R0}.when.gt", "expected a finite number", True),
    (graph(rule({"feature": "a", "in": ["x", {}]})), f"{R0}.when.in[1]", "expected a string, number or boolean", True),
    (graph(rule({"feature": "country", "in": ["FR", "DE", False]})), f"{R0}.when.in[2]", "a boolean (False) among strings: YAML reads", True),
    (graph(rule({"feature": "country", "in": [True, "x"]})), f"{R0}.when.in[0]", "a boolean (True) among strings", True),
    (graph(rule({"output": "proba.", "ge": 1})), f"{R0}.when.output", 'expected "prediction" or "proba.<class>"', True),
    (graph(rule({"feature": "a", "eq": None})), f"{R0}.when.eq", "expected a string, number or boolean", True),
    (graph(rule({"feature": "a", "eq": 1}, {"reason": "r"})), f"{R0}.then", "missing key 'decision'", True),
    (graph(rule({"feature": "a", "eq": 1}, {"decision": "d", "prediction": [1]})), f"{R0}.then.prediction", "expected a string, number or boolean", True),
    (graph({"split": {**SPLIT1, "stiky_by": "user"}}), "root.split", "unknown key 'stiky_by'", True),
    (graph({"split": {"branches": [{"weight": 0, "node": "lr"}]}}), "root.split.branches", "weights must not all be zero", True),
    (graph({"shadow": {"primary": "lr", "shadows": ["nb"], "percent": 150}}), "root.shadow.percent", "expected a finite number from 0 to 100", True),
    (graph({"shadow": {"primary": "lr", "shadows": ["nb"], "percent": float("nan")}}), "root.shadow.percent", "expected a finite number", False),
    (graph({"model": "lr", "as": None}), "root.as", "null is not allowed", True),
    (graph("lr", description=None), "description", "null is not allowed", True),
    (graph(deep(40)), "root" + ".sequence.steps[0]" * 32, "nested deeper than 32 levels", False),
    ([1, 2], "graph", "expected a mapping, got a list", True),
]  # fmt: skip


@pytest.mark.parametrize(("doc", "path", "detail", "schema_rejects"), INVALID)
def test_errors_name_the_path(doc: Any, path: str, detail: str, schema_rejects: bool) -> None:
    with pytest.raises(GraphError) as info:
        parse_graph(doc, KNOWN)
    assert info.value.path == path
    assert info.value.detail.startswith(detail), info.value.detail
    assert str(info.value) == f"{path}: {info.value.detail}"
    if schema_rejects:
        assert not schema_accepts(doc)


def test_exact_message_of_an_unknown_member() -> None:
    doc = INVALID[0][0]
    with pytest.raises(
        GraphError, match=r'^root\.rules\.over\.ensemble\.members\[1\]: unknown model "tre"'
    ):
        parse_graph(doc, KNOWN)
    assert parse_graph(doc).model_names() == ("lr", "tre")  # without known models: any name


# --- generated documents ------------------------------------------------------------------

model_names = st.sampled_from(["lr", "tree", "nb", "m-1", "x.y_Z9"])
features = st.sampled_from(["amount", "country", "id", "user", "naïve"])
scalars = st.one_of(
    st.text(max_size=5),
    st.integers(-(10**6), 10**6),
    st.floats(-1e9, 1e9, allow_nan=False),
    st.booleans(),
)
numbers = st.one_of(st.integers(-1000, 1000), st.floats(-1e6, 1e6, allow_nan=False))


def not_yaml_booleans(values: list[Any]) -> bool:
    """An ``in`` list the parser takes: no boolean among strings (YAML's unquoted ``no``)."""
    return not (
        any(isinstance(v, str) for v in values) and any(v is True or v is False for v in values)
    )


operators = st.one_of(
    st.tuples(st.sampled_from(["gt", "ge", "lt", "le"]), numbers),
    st.tuples(st.sampled_from(["eq", "ne"]), scalars),
    st.tuples(st.just("in"), st.lists(scalars, min_size=1, max_size=3).filter(not_yaml_booleans)),
    st.tuples(st.just("is_missing"), st.booleans()),
)
outputs = st.sampled_from(["prediction", "proba.True", "proba.spam"])


def conditions(with_outputs: bool) -> st.SearchStrategy[dict[str, Any]]:
    targets = st.tuples(st.just("feature"), features)
    if with_outputs:
        targets = st.one_of(targets, st.tuples(st.just("output"), outputs))
    leaves = st.builds(lambda t, o: {t[0]: t[1], o[0]: o[1]}, targets, operators)
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.builds(lambda cs: {"all": cs}, st.lists(inner, min_size=1, max_size=3)),
            st.builds(lambda cs: {"any": cs}, st.lists(inner, min_size=1, max_size=3)),
            st.builds(lambda c: {"not": c}, inner),
        ),
        max_leaves=4,
    )


decisions = st.fixed_dictionaries(
    {"decision": st.text(min_size=1, max_size=8)},
    optional={"reason": st.text(min_size=1, max_size=20), "prediction": scalars},
)
model_nodes = st.one_of(
    model_names, st.builds(lambda n, a: {"model": n, "as": a}, model_names, features)
)


def weighted(members: list[Any]) -> st.SearchStrategy[dict[str, Any]]:
    weights = st.lists(st.floats(0.1, 10), min_size=len(members), max_size=len(members))
    return weights.map(
        lambda ws: {"ensemble": {"members": members, "combine": "weighted", "weights": ws}}
    )


def compound(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    some = st.lists(inner, min_size=1, max_size=3)
    return st.one_of(
        st.builds(
            lambda pre, last: {"sequence": {"steps": [*pre, last]}},
            st.lists(model_nodes, max_size=2),
            inner,
        ),
        st.builds(
            lambda ms, c: {"ensemble": {"members": ms, "combine": c}},
            some,
            st.sampled_from(["mean", "vote"]),
        ),
        some.flatmap(weighted),
        st.lists(model_nodes, min_size=1, max_size=3).map(
            lambda ms: {"ensemble": {"members": ms, "combine": "weighted", "weights": "by_metric"}}
        ),
        st.builds(
            lambda over, rules: {"rules": {"over": over, "rules": rules}},
            inner,
            st.lists(
                st.builds(lambda w, d: {"when": w, "then": d}, conditions(True), decisions),
                min_size=1,
                max_size=3,
            ),
        ),
        st.builds(
            lambda cases, default: {"switch": {"cases": cases, "default": default}},
            st.lists(
                st.builds(lambda w, n: {"when": w, "then": n}, conditions(False), inner),
                min_size=1,
                max_size=3,
            ),
            inner,
        ),
        st.builds(
            lambda bs, s: {"split": {"branches": bs, "sticky_by": s}},
            st.lists(
                st.builds(lambda w, n: {"weight": w, "node": n}, st.integers(1, 100), inner),
                min_size=1,
                max_size=3,
            ),
            st.sampled_from(["id", "user"]),
        ),
        st.builds(
            lambda p, ss, pct: {"shadow": {"primary": p, "shadows": ss, "percent": pct}},
            inner,
            st.lists(inner, min_size=1, max_size=2),
            st.floats(0, 100),
        ),
    )


documents = st.builds(
    lambda root, description: (
        {"name": "g-1", "root": root}
        | ({} if description is None else {"description": description})
    ),
    st.recursive(model_nodes, compound, max_leaves=8),
    st.none() | st.text(max_size=10),
)


@settings(max_examples=150, deadline=None)
@given(documents)
def test_generated_documents_parse_validate_and_round_trip(doc: dict[str, Any]) -> None:
    spec = parse_graph(doc)
    assert schema_accepts(doc), next(iter(VALIDATOR.iter_errors(doc))).message
    dumped = graph_to_dict(spec)
    assert schema_accepts(dumped)
    assert parse_graph(dumped) == spec


@settings(max_examples=150, deadline=None)
@given(conditions(True))
def test_generated_conditions_compile(condition: dict[str, Any]) -> None:
    doc = graph(rule(condition))
    spec = parse_graph(doc)
    assert isinstance(spec.root, RulesNode)
    test = compile_condition(spec.root.rules[0].when)
    assert test({"amount": 3, "country": "FR"}, True, {True: 0.5}) in (True, False)


# --- conditions ---------------------------------------------------------------------------

FEATURES = {"amount": 250.0, "n": 3, "flag": True, "country": "FR", "none": None}


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ({"feature": "amount", "gt": 100}, True),
        ({"feature": "amount", "ge": 250}, True),
        ({"feature": "amount", "lt": 250}, False),
        ({"feature": "n", "le": 3}, True),
        ({"feature": "country", "gt": 1}, False),  # a string is not a number
        ({"feature": "flag", "ge": 1}, False),  # nor is a boolean
        ({"feature": "flag", "eq": True}, True),
        ({"feature": "flag", "eq": 1}, False),
        ({"feature": "n", "eq": 3.0}, True),
        ({"feature": "n", "ne": 4}, True),
        ({"feature": "absent", "ne": 4}, False),  # missing: every comparison is false
        ({"feature": "none", "ne": 4}, False),
        ({"feature": "absent", "is_missing": True}, True),
        ({"feature": "none", "is_missing": True}, True),
        ({"feature": "n", "is_missing": False}, True),
        ({"feature": "country", "in": ["DE", "FR"]}, True),
        ({"feature": "flag", "in": [1, "x"]}, False),
        ({"feature": "flag", "in": [True]}, True),
        ({"feature": "n", "in": [True, 3]}, True),
        ({"not": {"feature": "absent", "eq": 4}}, True),
        ({"all": [{"feature": "n", "eq": 3}, {"feature": "flag", "eq": True}]}, True),
        ({"all": [{"feature": "n", "eq": 3}, {"feature": "flag", "eq": False}]}, False),
        ({"any": [{"feature": "n", "eq": 4}, {"feature": "flag", "eq": True}]}, True),
        ({"any": [{"feature": "n", "eq": 4}, {"feature": "absent", "eq": True}]}, False),
        ({"output": "prediction", "eq": True}, True),
        ({"output": "proba.True", "ge": 0.7}, True),
        ({"output": "proba.true", "gt": 0.7}, False),
        ({"output": "proba.False", "le": 0.3}, True),
        # a class the probabilities leave out (misspelt, 1 for True) is missing, as a feature
        ({"output": "proba.spam", "eq": 0.0}, False),
        ({"output": "proba.spam", "lt": 0.2}, False),
        ({"output": "proba.Ture", "lt": 0.2}, False),
        ({"output": "proba.1", "le": 1.0}, False),  # True is not the class 1
        ({"output": "proba.spam", "ne": 0.5}, False),
        ({"output": "proba.spam", "is_missing": True}, True),
        ({"not": {"output": "proba.Ture", "ge": 0.2}}, True),
    ],
)
def test_condition_semantics(condition: dict[str, Any], expected: bool) -> None:
    doc = graph(rule(condition))
    root = parse_graph(doc).root
    assert isinstance(root, RulesNode)
    test = compile_condition(root.rules[0].when)
    assert test(FEATURES, True, {False: 0.3, True: 0.7}) is expected


def test_probabilities_of_labels_that_are_not_booleans() -> None:
    at_least = compile_condition(Comparison("output", "proba.1", "ge", 0.5))
    assert at_least({}, 1, {0: 0.4, 1: 0.6}) is True
    spam = compile_condition(Comparison("output", "proba.spam", "ge", 0.5))
    assert spam({}, "spam", {"spam": 0.9, "ham": 0.1}) is True
    assert spam({}, 1.0, None) is False  # a regressor has no probabilities: missing
    assert spam({}, None, {}) is False  # nor has an untrained classifier


# --- YAML's booleans ------------------------------------------------------------------------


def test_a_yaml_graph_file_reads_no_and_yes_as_strings(tmp_path: Path) -> None:
    """The CLI reads graph YAML with YAML 1.2's booleans (true/false only): Norway stays "NO"
    and ``eq: yes`` a string, as the same document in JSON."""
    from stream.cli.graphs import load_document

    path = tmp_path / "g.yaml"
    path.write_text(
        "name: g\n"
        "root:\n"
        "  rules:\n"
        "    over: lr\n"
        "    rules:\n"
        "      - when: {all: [{feature: country, in: [FR, DE, NO]}, {feature: vip, eq: yes},\n"
        "                     {feature: flag, eq: true}, {feature: off, is_missing: False}]}\n"
        "        then: {decision: review, prediction: on}\n"
    )
    doc = load_document(path)
    when = doc["root"]["rules"]["rules"][0]["when"]["all"]
    assert when == [
        {"feature": "country", "in": ["FR", "DE", "NO"]},
        {"feature": "vip", "eq": "yes"},
        {"feature": "flag", "eq": True},
        {"feature": "off", "is_missing": False},
    ]
    assert doc["root"]["rules"]["rules"][0]["then"]["prediction"] == "on"
    assert parse_graph(doc, KNOWN) == parse_graph(json.loads(json.dumps(doc)), KNOWN)
    import yaml

    assert yaml.safe_load("[NO]") == [False]  # PyYAML's own loader is left as it is
