"""The bodies of graph predict requests and responses: parsing and checking what a request
carries (features or instances, an optional id per answer), and the JSON bytes of an answer.
Problems are listed in the shape of `serving.inputs` (`InputError`)."""

from __future__ import annotations

from typing import Any

import orjson

from serving.inputs import (
    MAX_ERRORS,
    InputError,
    InputLimits,
    check_features,
    check_instances,
    finite_features,
    json_type,
    problem,
)


def _request_id(value: Any, loc: list[Any], max_length: int) -> str | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not 0 < len(value) <= max_length:
        shown = f"{len(value)} characters" if isinstance(value, str) else json_type(value)
        msg = f"an id is a string of 1 to {max_length} characters or an integer, not {shown}"
        raise InputError([problem(loc, msg, "request_id")])
    return value


def parse_graph_body(
    raw: bytes, limits: InputLimits, max_id_length: int = 256
) -> tuple[dict[str, Any], str | None] | tuple[list[dict[str, Any]], list[str | None]]:
    """``(features, id)`` of a single request or ``(instances, ids)`` of a batch (`InputError`
    listing the problems, in the shape of `serving.inputs`).

    >>> limits = InputLimits(max_features=4, max_instances=2)
    >>> parse_graph_body(b'{"features": {"x": 1}, "id": "u1"}', limits)
    ({'x': 1}, 'u1')
    >>> parse_graph_body(b'{"instances": [{"x": 1}, {"x": 2}], "ids": [7, null]}', limits)
    ([{'x': 1}, {'x': 2}], ['7', None])
    """
    return graph_body(load_graph_body(raw), limits, max_id_length)


def load_graph_body(raw: bytes) -> Any:
    """The JSON value of a body, or an `InputError` naming why it is not JSON."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InputError([problem([], f"invalid JSON: {exc}", "json_invalid")]) from None


def numeric_graph_body(
    body: Any, limits: InputLimits, max_id_length: int = 256
) -> tuple[dict[str, Any], str | None] | None:
    """``(features, id)`` of the commonest body, ``{"features": {name: finite number}}`` with
    or without an ``"id"``, checked in C loops (`serving.inputs.numeric_features`): its features
    hold no ``null``. None for anything else, which `graph_body` checks (and explains).

    >>> numeric_graph_body({"features": {"x": 1.5}, "id": 7}, InputLimits())
    ({'x': 1.5}, '7')
    >>> numeric_graph_body({"features": {"x": None}}, InputLimits()) is None
    True
    """
    if body.__class__ is not dict or not 0 < len(body) <= 2:
        return None
    features = finite_features(body.get("features"), limits)
    if features is None or (len(body) == 2 and "id" not in body):
        return None
    request_id = body.get("id")
    return features, None if request_id is None else _request_id(request_id, ["id"], max_id_length)


def graph_body(
    body: Any, limits: InputLimits, max_id_length: int = 256
) -> tuple[dict[str, Any], str | None] | tuple[list[dict[str, Any]], list[str | None]]:
    """`parse_graph_body` of a body already loaded (`load_graph_body`)."""
    if not isinstance(body, dict):
        raise InputError([problem([], f"expected an object, got {json_type(body)}", "dict_type")])
    extra = [k for k in body if k not in ("features", "instances", "id", "ids")]
    if extra:
        msg = "unknown field: use 'features' (and 'id') or 'instances' (and 'ids')"
        raise InputError([problem([k], msg, "extra_forbidden") for k in extra[:MAX_ERRORS]])
    single, batch = "features" in body, "instances" in body
    if single == batch or (single and "ids" in body) or (batch and "id" in body):
        msg = (
            "give either 'features' (and 'id') or 'instances' (and 'ids')"
            if single or batch
            else "field required ('features' or 'instances')"
        )
        raise InputError([problem([] if single or batch else ["features"], msg, "value_error")])
    if single:
        features = check_features(body["features"], ["features"], limits)
        return features, _request_id(body.get("id"), ["id"], max_id_length)
    instances = check_instances(body["instances"], limits)
    raw_ids = body.get("ids")
    if raw_ids is None:
        no_ids: list[str | None] = [None] * len(instances)
        return instances, no_ids
    if not isinstance(raw_ids, list) or len(raw_ids) != len(instances):
        got = f"{len(raw_ids)} ids" if isinstance(raw_ids, list) else json_type(raw_ids)
        msg = f"expected an array of one id (or null) per instance, got {got}"
        raise InputError([problem(["ids"], msg, "ids")])
    ids = [_request_id(v, ["ids", i], max_id_length) for i, v in enumerate(raw_ids)]
    return instances, ids
