"""Parsing and validating prediction request bodies: pure functions, no HTTP.

Bodies are parsed with orjson and checked by hand (faster than a typed pydantic body by tens of
µs per request). Every problem becomes an `InputError` whose ``detail`` has FastAPI's shape, a
list of ``{"loc", "msg", "type"}`` naming the field and the problem.

>>> limits = InputLimits(max_features=2, max_instances=2)
>>> parse_predict_body(b'{"features": {"x": 1.5, "c": "red"}}', limits)
{'x': 1.5, 'c': 'red'}
>>> parse_predict_body(b'{"instances": [{"x": 1}, {"x": 2}]}', limits)
[{'x': 1}, {'x': 2}]
>>> try:
...     parse_predict_body(b'{"features": {"x": [1]}}', limits)
... except InputError as err:
...     err.detail
[{'loc': ['body', 'features', 'x'], 'msg': 'a feature value must be a number, a string, a boolean or null, not array', 'type': 'feature_type'}]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import chain
from typing import Any

import orjson

read_dot_in_c: Callable[[bytes, dict[Any, Any], int], float | None] | None
read_features_in_c: Callable[[bytes, int], dict[str, float | int] | None] | None
try:  # the commonest body's features or linear sum read in C (serving/_v2_body.c), built by pip
    from serving._v2_body import read_dot as read_dot_in_c  # install
    from serving._v2_body import read_features as read_features_in_c
except ImportError:  # without a C compiler at install (tests require it: here and in CI)
    read_dot_in_c = read_features_in_c = None

FeatureDict = dict[str, Any]
_SCALARS = (int, float, str, bool, type(None))
MAX_ERRORS = 20
"""Problems listed at most in one answer."""


@dataclass(frozen=True, slots=True)
class InputLimits:
    max_features: int = 10_000
    max_instances: int = 1_000
    max_cells: int = 1_000_000
    """Most values in one v2 infer request, rows × inputs (`serving.v2_requests`). A v2 column
    spends 2 bytes on a value where ``/v1`` writes its feature's name too, so the body limit
    alone let v2 carry 4–5 times ``/v1``'s values; a million is about what ``/v1`` carries in
    its default 16 MiB (1000 instances of 1000 features: 8.5 MB)."""


class InputError(Exception):
    """The body is not a valid prediction request; ``detail`` lists every problem found."""

    def __init__(self, detail: list[dict[str, Any]]) -> None:
        self.detail = detail
        super().__init__(detail)


def problem(loc: list[Any], msg: str, kind: str) -> dict[str, Any]:
    """One problem of a request body, at ``loc`` within it, in FastAPI's shape of a 422."""
    return {"loc": ["body", *loc], "msg": msg, "type": kind}


def json_type(value: Any) -> str:
    """The type of a JSON value for messages: ``object``, ``array``, else the Python name."""
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return type(value).__name__


def parse_predict_body(raw: bytes, limits: InputLimits) -> FeatureDict | list[FeatureDict]:
    """The features of a single request (a dict) or of a batch (a list of dicts)."""
    return predict_features(load_body(raw), limits)


def load_body(raw: bytes) -> Any:
    """The JSON value of a body, or an `InputError` (invalid JSON, a non-finite number)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        kind = "finite_number" if "infinity" in str(exc) else "json_invalid"
        raise InputError([problem([], f"invalid JSON: {exc}", kind)]) from None


def numeric_features(body: Any, limits: InputLimits) -> FeatureDict | None:
    """The features of the commonest body, ``{"features": {name: finite number, ...}}``, in
    C loops; None for anything else, which `predict_features` then checks (and explains).
    The features hold no ``null``: nothing is missing.

    >>> numeric_features({"features": {"x": 1.5, "n": 2}}, InputLimits())
    {'x': 1.5, 'n': 2}
    >>> numeric_features({"features": {"x": None}}, InputLimits()) is None
    True
    """
    if body.__class__ is not dict or len(body) != 1:
        return None
    return finite_features(body.get("features"), limits)


def linear_sum(raw: bytes, params: dict[Any, Any], limits: InputLimits) -> float | None:
    """The sum a compiled linear model (``params``: `learners.linear.CompiledLinear`'s) adds
    for the features of the commonest body, ``{"features": {name: finite number, ...}}``,
    read from its bytes in C without building the features: what the general reading (orjson,
    ``numeric_features`` or ``predict_features``) then the model's sum give, float for float.
    None for any other body (or without the C reader), which the general reading then reads.

    >>> params = {"x": (1.0, 2.0, 0.5), "y": (0.0, 1.0, -1.0)}
    >>> linear_sum(b'{"features": {"x": 5, "y": 0.25, "z": 9}}', params, InputLimits())
    0.75
    >>> linear_sum(b'{"features": {"x": 5, "id": "a1"}}', params, InputLimits()) is None
    True
    """
    if read_dot_in_c is None:
        return None
    return read_dot_in_c(raw, params, limits.max_features)


def read_features(raw: bytes, limits: InputLimits) -> FeatureDict | None:
    """The features of the commonest body, ``{"features": {name: number, ...}}``, read from its
    bytes in C: what the general reading (orjson, then ``numeric_features``) gives, name for
    name, in the same order, an ``int`` or a float as orjson reads each, float for float;
    the features hold no ``null``. None for any other body (or without the C reader), which
    the general reading then reads.

    >>> read_features(b'{"features": {"x": 1.5, "n": -2}}', InputLimits())
    {'x': 1.5, 'n': -2}
    >>> read_features(b'{"features": {"x": 1.5}, "id": "a1"}', InputLimits()) is None
    True
    """
    if read_features_in_c is None:
        return None
    return read_features_in_c(raw, limits.max_features)


def finite_features(features: Any, limits: InputLimits) -> FeatureDict | None:
    """``features`` when it is an object of at most ``limits.max_features`` finite numbers
    (no ``null``: nothing is missing), checked in C loops; None for anything else.

    >>> finite_features({"x": 1.5, "n": 2}, InputLimits())
    {'x': 1.5, 'n': 2}
    >>> finite_features({"x": float("nan")}, InputLimits()) is None
    True
    """
    if features.__class__ is not dict or len(features) > limits.max_features:
        return None
    return features if _finite_numbers(features.values()) else None


def numeric_instances(body: Any, limits: InputLimits) -> list[FeatureDict] | None:
    """The instances of a batch whose features are all finite numbers (`numeric_features`, for
    ``{"instances": [...]}``), checked for the whole batch at once in C loops; None for
    anything else.

    >>> numeric_instances({"instances": [{"x": 1.5}, {"x": 2}]}, InputLimits())
    [{'x': 1.5}, {'x': 2}]
    >>> numeric_instances({"instances": [{"x": 1.5}, {"x": "a"}]}, InputLimits()) is None
    True
    """
    if body.__class__ is not dict or len(body) != 1:
        return None
    instances = body.get("instances")
    if instances.__class__ is not list or len(instances) > limits.max_instances:
        return None
    if not instances:
        return instances
    if set(map(type, instances)) != {dict} or max(map(len, instances)) > limits.max_features:
        return None
    return instances if _finite_numbers(chain.from_iterable(map(dict.values, instances))) else None


def _finite_numbers(values: Iterable[Any]) -> bool:
    """Whether every value is a finite number (an int, a float or a bool), by one C loop
    (≈ 0.25 µs for 30 values): ``sum`` raises `TypeError` on anything else (a string, null, an
    array, an object), and a finite sum means every value is finite. An overflow answers False:
    the caller's own checks then look at each value."""
    try:
        return math.isfinite(sum(values))
    except (TypeError, OverflowError):
        return False


def predict_features(body: Any, limits: InputLimits) -> FeatureDict | list[FeatureDict]:
    """`parse_predict_body` of a body already loaded (`load_body`)."""
    if not isinstance(body, dict):
        raise InputError([problem([], f"expected an object, got {json_type(body)}", "dict_type")])
    if len(body) == 1 and "features" in body:  # the common case, in short
        problems: list[dict[str, Any]] = []
        features = _check_features(body["features"], ["features"], limits, problems)
        if problems:
            raise InputError(problems)
        return features
    extra = [k for k in body if k not in ("features", "instances")]
    if extra:
        raise InputError(
            [problem([k], "unknown field: use 'features' or 'instances'", "extra_forbidden")
             for k in extra[:MAX_ERRORS]]
        )  # fmt: skip
    if "features" in body and "instances" in body:
        raise InputError(
            [problem([], "give either 'features' or 'instances', not both", "value_error")]
        )
    if "features" in body:
        problems = []
        features = _check_features(body["features"], ["features"], limits, problems)
        if problems:
            raise InputError(problems)
        return features
    if "instances" not in body:
        raise InputError(
            [problem(["features"], "field required ('features' or 'instances')", "missing")]
        )
    return check_instances(body["instances"], limits)


def check_instances(instances: Any, limits: InputLimits) -> list[FeatureDict]:
    """A body's ``instances``: an array of at most ``limits.max_instances`` feature objects,
    each checked as `check_features` checks one; `InputError` lists the first problems.

    >>> check_instances([{"x": 1.5}], InputLimits())
    [{'x': 1.5}]
    >>> check_instances({"x": 1.5}, InputLimits())
    Traceback (most recent call last):
    ...
    serving.inputs.InputError: ...
    """
    if not isinstance(instances, list):
        msg = f"expected an array of feature objects, got {json_type(instances)}"
        raise InputError([problem(["instances"], msg, "list_type")])
    if len(instances) > limits.max_instances:
        msg = f"{len(instances)} instances, the limit is {limits.max_instances}"
        raise InputError([problem(["instances"], msg, "too_long")])
    problems: list[dict[str, Any]] = []
    for i, features in enumerate(instances):
        _check_features(features, ["instances", i], limits, problems)
        if len(problems) >= MAX_ERRORS:
            break
    if problems:
        raise InputError(problems[:MAX_ERRORS])
    return instances


def _check_features(
    features: Any, loc: list[Any], limits: InputLimits, problems: list[dict[str, Any]]
) -> FeatureDict:
    if not isinstance(features, dict):
        msg = f"expected an object of feature values, got {json_type(features)}"
        problems.append(problem(loc, msg, "dict_type"))
        return {}
    if len(features) > limits.max_features:
        msg = f"{len(features)} features, the limit is {limits.max_features}"
        problems.append(problem(loc, msg, "too_long"))
        return features
    if _finite_numbers(features.values()):  # the common case
        return features
    for name, value in features.items():
        if value.__class__ is float:
            if not math.isfinite(value):  # pragma: no cover - orjson refuses them already
                problems.append(problem([*loc, name], "number is not finite", "finite_number"))
        elif not isinstance(value, _SCALARS):
            problems.append(
                problem(
                    [*loc, name],
                    "a feature value must be a number, a string, a boolean or null, "
                    f"not {json_type(value)}",
                    "feature_type",
                )
            )
        if len(problems) >= MAX_ERRORS:
            break
    return features


def check_features(features: Any, loc: list[Any], limits: InputLimits) -> FeatureDict:
    """``features`` (at ``loc`` in a body) checked as `parse_predict_body` checks them, for
    other bodies that carry feature objects (`serving.graphs`); `InputError` lists the problems.

    >>> check_features({"x": 1.5}, ["features"], InputLimits())
    {'x': 1.5}
    """
    problems: list[dict[str, Any]] = []
    checked = _check_features(features, loc, limits, problems)
    if problems:
        raise InputError(problems)
    return checked
