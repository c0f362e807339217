"""Conditions of serving graphs, compiled once into plain closures.

A `schemas.graphs.Condition` is data; `compile_condition` turns it into a `Test`, a function of
the request's features, and of the answer a rule looks at (its prediction and probabilities:
``None`` for a switch, which tests features only). Nothing is ever passed to ``eval``.

Semantics (also in `schemas.graphs`): an absent or ``None`` value is missing and every
comparison with it is false, ``ne`` included (``is_missing`` tests for it); ``gt ge lt le`` are
false unless the value is a number (booleans are not numbers); ``eq``, ``ne`` and ``in`` never
equate a boolean with a number. ``proba.C`` is the probability of the class whose ``str`` is
``C`` (``true``/``false`` also name the booleans); missing when the probabilities leave that
class out (a misspelt class, ``proba.true`` of 0/1 labels) or when there are none (a regressor,
an untrained classifier), so that no comparison with it holds.

>>> from schemas.graphs import AllOf, Comparison, Not
>>> risky = compile_condition(AllOf((
...     Comparison("feature", "amount", "gt", 100),
...     Not(Comparison("feature", "country", "in", ("FR", "DE"))),
...     Comparison("output", "proba.true", "ge", 0.5),
... )))
>>> risky({"amount": 250.0, "country": "US"}, True, {False: 0.3, True: 0.7})
True
>>> risky({"amount": 250.0, "country": "FR"}, True, {False: 0.3, True: 0.7})
False
>>> risky({"country": "US"}, True, {False: 0.3, True: 0.7})  # amount missing
False
>>> compile_condition(Comparison("feature", "flag", "eq", 1))({"flag": True}, None, None)
False
>>> compile_condition(Comparison("output", "proba.Ture", "lt", 0.2))({}, True, {True: 0.9})
False
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any

from schemas.graphs import AllOf, AnyOf, Comparison, Condition, Not

Test = Callable[[Mapping[str, Any], Any, Mapping[Any, float] | None], bool]
"""``test(features, prediction, probabilities) -> bool``."""

_Get = Callable[[Mapping[str, Any], Any, Mapping[Any, float] | None], Any]


def compile_condition(condition: Condition) -> Test:
    """The `Test` of ``condition``: the structure is walked once, here, not per request."""
    if isinstance(condition, AllOf | AnyOf):
        parts = tuple(compile_condition(c) for c in condition.conditions)
        want = isinstance(condition, AnyOf)  # the first part answering `want` decides

        def combined(x: Mapping[str, Any], p: Any, q: Mapping[Any, float] | None) -> bool:
            for part in parts:
                if part(x, p, q) is want:
                    return want
            return not want

        return combined
    if isinstance(condition, Not):
        inner = compile_condition(condition.condition)
        return lambda x, p, q: not inner(x, p, q)
    return _comparison(condition)


def _getter(c: Comparison) -> _Get:
    name = c.name
    if c.target == "feature":
        return lambda x, p, q: x.get(name)
    if name == "prediction":
        return lambda x, p, q: p
    label = name.removeprefix("proba.")
    bool_key = {"True": True, "true": True, "False": False, "false": False}.get(label)

    def probability(x: Mapping[str, Any], p: Any, q: Mapping[Any, float] | None) -> Any:
        if not q:
            return None
        for key, value in q.items():
            if key is bool_key if type(key) is bool else str(key) == label:
                return value
        return None  # a class the model does not have: missing, as an absent feature

    return probability


def _is_number(v: Any) -> bool:
    return isinstance(v, float) or (isinstance(v, int) and not isinstance(v, bool))


_ORDER: dict[str, Callable[[Any, Any], bool]] = {
    "gt": operator.gt, "ge": operator.ge, "lt": operator.lt, "le": operator.le,
}  # fmt: skip


def _equal(v: Any, value: Any) -> bool:
    return v is not None and (type(v) is bool) is (type(value) is bool) and v == value


def _comparison(c: Comparison) -> Test:
    get, op, value = _getter(c), c.op, c.value
    if op == "is_missing":
        return lambda x, p, q: (get(x, p, q) is None) is value
    compare = _ORDER.get(op)
    if compare is not None:

        def ordered(x: Mapping[str, Any], p: Any, q: Mapping[Any, float] | None) -> bool:
            v = get(x, p, q)  # a float is the commonest value: no call to check it
            return (v.__class__ is float or _is_number(v)) and compare(v, value)

        return ordered
    if op == "eq":
        return lambda x, p, q: _equal(get(x, p, q), value)
    if op == "ne":
        return lambda x, p, q: (v := get(x, p, q)) is not None and not _equal(v, value)
    bools = tuple(v for v in value if type(v) is bool)
    others = frozenset(v for v in value if type(v) is not bool)

    def member(x: Mapping[str, Any], p: Any, q: Mapping[Any, float] | None) -> bool:
        v = get(x, p, q)
        if v is None:
            return False
        if type(v) is bool:
            return v in bools
        try:
            return v in others
        except TypeError:  # an unhashable value is in no list of scalars
            return False

    return member
