"""The shortcuts of `serving.inputs` for the commonest bodies: they take exactly the bodies of
finite numbers, and give what the general checks give for them."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from serving.inputs import (
    InputError,
    InputLimits,
    numeric_features,
    numeric_instances,
    predict_features,
)
from tests.support.fuzz import json_values

LIMITS = InputLimits(max_features=6, max_instances=3)
numbers = st.one_of(st.integers(min_value=-(10**30), max_value=10**30), st.floats(), st.booleans())
values = numbers | st.none() | st.text(max_size=3) | json_values
features = st.dictionaries(st.text(max_size=6), values, max_size=8)
numeric = st.dictionaries(st.text(max_size=6), numbers, max_size=8)
bodies = st.one_of(
    json_values,
    st.builds(lambda f: {"features": f}, features | numeric | json_values),
    st.builds(lambda i: {"instances": i}, st.lists(features | numeric, max_size=4) | json_values),
    st.builds(lambda f, e: {"features": f, **e}, numeric, st.dictionaries(st.text(), values)),
)


def _general(body: Any) -> Any:
    try:
        return predict_features(body, LIMITS)
    except InputError:
        return InputError


def _finite_numbers(x: dict[str, Any]) -> bool:
    return all(
        type(v) in (int, bool) or (type(v) is float and math.isfinite(v)) for v in x.values()
    )


def _moderate_numbers(x: dict[str, Any]) -> bool:
    """Finite numbers whose sum cannot overflow: the shortcut must take them. (Larger ones it
    may leave to the general checks: it tests one sum.)"""
    return all(type(v) in (int, float, bool) and abs(v) <= 1e300 for v in x.values())


@settings(max_examples=500)
@given(body=bodies)
def test_numeric_features_takes_exactly_the_finite_numbers_and_agrees(body: Any) -> None:
    shortcut = numeric_features(body, LIMITS)
    general = _general(body)
    commonest = (
        isinstance(body, dict)
        and list(body) == ["features"]
        and isinstance(body["features"], dict)
        and len(body["features"]) <= LIMITS.max_features
    )
    if commonest and _moderate_numbers(body["features"]):
        assert shortcut is not None
    if shortcut is not None:
        assert commonest and _finite_numbers(shortcut)
        assert shortcut is general  # the same features, checked the same
        assert None not in shortcut.values()  # nothing missing: no null filter needed


@settings(max_examples=500)
@given(body=bodies)
def test_numeric_instances_takes_exactly_batches_of_finite_numbers_and_agrees(body: Any) -> None:
    shortcut = numeric_instances(body, LIMITS)
    general = _general(body)
    batch = (
        isinstance(body, dict)
        and list(body) == ["instances"]
        and isinstance(body["instances"], list)
        and len(body["instances"]) <= LIMITS.max_instances
        and all(isinstance(x, dict) and len(x) <= LIMITS.max_features for x in body["instances"])
    )
    if batch and all(_moderate_numbers(x) for x in body["instances"]):
        assert shortcut is not None
    if shortcut is not None:
        assert batch and all(_finite_numbers(x) for x in shortcut)
        assert shortcut is general
        assert all(None not in x.values() for x in shortcut)
