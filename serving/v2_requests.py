"""Requests of the Open Inference Protocol v2 (`serving.v2`): an infer body parsed into rows of
River features, or a `serving.v2_tensors.V2Error` saying what is wrong (400).

Pure conversions, no routes; the mapping of tensors to features is documented in `serving.v2`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import orjson

from serving.inputs import InputLimits
from serving.v2_tensors import (
    BINARY_HINT,
    DATATYPES,
    FLOAT_MAX,
    FLOAT_OVERFLOW,
    FLOATS,
    INT_RANGES,
    JSON_INPUT,
    SCALARS,
    SHM_KEYS,
    V2Error,
)

read_row_in_c: Callable[[bytes, int], dict[str, Any] | None] | None
read_row_dot_in_c: Callable[[bytes, dict[Any, Any], int], float | None] | None
try:  # the commonest body read in C (serving/_v2_body.c), built by pip install when it can be
    from serving._v2_body import read_row as read_row_in_c
    from serving._v2_body import read_row_dot as read_row_dot_in_c
except ImportError:  # without a C compiler at install (tests require it: here and in CI)
    read_row_in_c = read_row_dot_in_c = None


def _type_name(value: Any) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return "null" if value is None else type(value).__name__


def _flat(name: str, data: Any) -> list[Any]:
    """A tensor's data, flat: a list of values or of one list of values per row."""
    if not isinstance(data, list):
        raise V2Error(400, f"input {name!r}: 'data' must be an array, not {_type_name(data)}")
    if not any(isinstance(v, list) for v in data):
        return data
    flat: list[Any] = []
    for row in data:
        if not isinstance(row, list) or any(isinstance(v, list | dict) for v in row):
            raise V2Error(400, f"input {name!r}: 'data' must be flat or nested once per row")
        flat.extend(row)
    return flat


def _rows(name: str, shape: Any, max_rows: int) -> int:
    """The number of rows of a ``[n]`` or ``[n, 1]`` shape."""
    if (
        not isinstance(shape, list)
        or not all(type(d) is int and d >= 0 for d in shape)
        or len(shape) not in (1, 2)
        or (len(shape) == 2 and shape[1] != 1)
    ):
        raise V2Error(400, f"input {name!r}: shape must be [n] or [n, 1] for n rows, not {shape}")
    n: int = shape[0]
    if n == 0:
        raise V2Error(400, f"input {name!r}: no rows (shape {shape})")
    if n > max_rows:
        raise V2Error(400, f"input {name!r}: {n} rows, the limit is {max_rows}")
    return n


def _check_value(name: str, datatype: str, value: Any) -> Any:
    """``value`` as the model gets it, or a 400 saying why it does not fit ``datatype``."""
    if value is None:
        return None  # a missing feature in this row, as in /v1
    kind = type(value)
    if datatype == "BOOL":
        ok = kind is bool
    elif datatype in FLOATS:
        ok = kind in (int, float)
        value = float(value) if ok else value
        if (
            ok
            and datatype != "FP64"
            and not -FLOAT_OVERFLOW[datatype] < value < FLOAT_OVERFLOW[datatype]
        ):
            shown = orjson.dumps(value).decode()
            raise V2Error(
                400,
                f"input {name!r}: {shown} is out of the range of {datatype} "
                f"(±{FLOAT_MAX[datatype]})",
            )
    elif datatype == "BYTES":
        ok = kind is str
    else:
        lo, hi = INT_RANGES[datatype]
        ok = kind is int and lo <= value <= hi
    if not ok:
        shown = orjson.dumps(value).decode()[:40]
        raise V2Error(400, f"input {name!r}: {shown} is not a valid {datatype} value")
    return value


def _json_row(name: str, text: Any, limits: InputLimits) -> dict[str, Any]:
    if not isinstance(text, str):
        raise V2Error(400, f"input {name!r}: each element must be a JSON object as a string")
    try:
        row = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise V2Error(400, f"input {name!r}: invalid JSON in an element: {exc}") from None
    if not isinstance(row, dict):
        raise V2Error(400, f"input {name!r}: an element is a JSON {_type_name(row)}, not an object")
    if len(row) > limits.max_features:
        raise V2Error(
            400, f"input {name!r}: {len(row)} features, the limit is {limits.max_features}"
        )
    for feature, value in row.items():
        if not isinstance(value, SCALARS):
            raise V2Error(
                400,
                f"input {name!r}: feature {feature!r} must be a number, a string, a boolean or "
                f"null, not {_type_name(value)}",
            )
    return row


_JSON_ROWS_CONTENT_TYPES: Final = (None, "str", "json")
"""The content types of a BYTES input named ``features`` that holds JSON rows: none, MLServer's
StringCodec's ``str`` (the JSON strings as they are), or ``json``."""


def _is_json_input(tensor: dict[str, Any]) -> bool:
    """Whether ``tensor`` holds JSON rows: ``content_type: "json"``, or a BYTES input named
    ``features`` with a content type of `_JSON_ROWS_CONTENT_TYPES`."""
    parameters = tensor.get("parameters") or {}
    content_type = parameters.get("content_type") if isinstance(parameters, dict) else None
    if content_type == "json":
        return True
    return bool(
        tensor.get("name") == JSON_INPUT
        and tensor.get("datatype") == "BYTES"
        and content_type in _JSON_ROWS_CONTENT_TYPES
    )


def _refuse_extensions(where: str, parameters: Any) -> None:
    if parameters is None:
        return
    if not isinstance(parameters, dict):
        raise V2Error(400, f"{where}: 'parameters' must be an object")
    if "binary_data_size" in parameters or parameters.get("binary_data") is True:
        raise V2Error(400, f"{where}: {BINARY_HINT}")
    if parameters.get("binary_data_output") is True:
        raise V2Error(400, f"{where}: {BINARY_HINT}")
    if any(k in parameters for k in SHM_KEYS):
        raise V2Error(400, f"{where}: the shared-memory extension is not supported")


_ONE_ROW: Final = [1]


def _one_row_of_numbers(inputs: list[Any]) -> dict[str, float] | None:
    """The row of the commonest request, in one pass: one input per feature, each exactly
    ``{"name", "shape": [1], "datatype": FP16/32/64, "data": [number]}``. None for anything
    else (parameters, more rows, other types, a problem: a shape ``[1.0]`` or ``[true]``, equal
    to ``[1]`` but not integers; a value out of its datatype's range): the general checks take
    over, and say what is wrong. The same row as theirs (integers become floats, as
    `_check_value`)."""
    row: dict[str, float] = {}
    for tensor in inputs:  # subscripts, not .get: no method call per field (≈ 4 µs for 30)
        if tensor.__class__ is not dict or len(tensor) != 4:
            return None
        try:
            name, datatype, shape, data = (
                tensor["name"], tensor["datatype"], tensor["shape"], tensor["data"]
            )  # fmt: skip
        except KeyError:
            return None
        if (
            name.__class__ is not str
            or name in row
            or datatype.__class__ is not str
            or shape != _ONE_ROW
            or shape[0].__class__ is not int
            or data.__class__ is not list
            or len(data) != 1
        ):
            return None
        value = data[0]
        kind = value.__class__
        if kind is int:
            value = float(value)
        elif kind is not float:
            return None
        if datatype != "FP64":  # FP32 and FP16 in range, no other datatype
            limit = FLOAT_OVERFLOW.get(datatype)
            if limit is None or not -limit < value < limit:
                return None
        row[name] = value
    return row


# -- the commonest body, read from its bytes ---------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Layout:
    """How a JSON writer lays out ``{"inputs": [{"name", "shape": [1], "datatype", "data":
    [v]}, ...]}``: ``prefix``, each tensor's name, its ``middles[datatype]``, its value, then
    ``between`` before the next tensor's name, and ``suffix`` after the last value."""

    prefix: bytes
    middles: tuple[tuple[bytes, str], ...]
    """(the text from a name to its value, its datatype), FP64 first."""
    between: bytes
    suffix: bytes = b"]}]}"


def _layout(compact: bool) -> _Layout:
    def fit(text: bytes) -> bytes:
        return text.replace(b": ", b":").replace(b", ", b",") if compact else text

    middle = b', "shape": [1], "datatype": "%b", "data": ['
    return _Layout(
        prefix=fit(b'{"inputs": [{"name": '),
        middles=tuple((fit(middle % t.encode()), t) for t in ("FP64", "FP32", "FP16", "INT64")),
        between=fit(b']}, {"name": '),
    )


_SPACED: Final = _layout(compact=False)
_COMPACT: Final = _layout(compact=True)
_LAYOUTS: Final = (_SPACED, _COMPACT)
"""Python's ``json.dumps`` (requests, tritonclient), then compact writers (orjson, httpx,
``JSON.stringify``)."""
_FLOAT: Final = frozenset({float})
_INT: Final = frozenset({int})
_NUMBER: Final = frozenset({int, float})


def _split_middles(text: bytes, layout: _Layout) -> tuple[list[bytes], str]:
    """``text`` split at the first of ``layout.middles`` after FP64's it holds, and that one's
    datatype; ``[text]`` when it holds none."""
    for middle, datatype in layout.middles[1:]:
        parts = text.split(middle)
        if len(parts) > 1:
            return parts, datatype
    return [text], "FP64"


def numeric_row(raw: bytes, limits: InputLimits) -> dict[str, Any] | None:
    """The row of the commonest body, read from its bytes: ``{"inputs": [...]}`` alone, one
    tensor per feature, each ``{"name", "shape": [1], "datatype", "data": [number]}``, all of
    one datatype, laid out as one of `_LAYOUTS`; None for anything else, which
    `parse_infer_body` then reads (and explains). When not None, the row is the one it gives.

    The C reader (``serving/_v2_body.c``: one pass, ≈ 2 µs for 30 features) answers first;
    what it leaves (escapes in a name, integers over 18 digits, floats it must hand to
    ``strtod`` written in over 63 characters, or all of it when it is not built) goes to
    `read_row_in_python` (≈ 7 µs). Neither reads an FP32 or FP16 value out of its datatype's
    range (`FLOAT_OVERFLOW`): the general reading refuses it.

    >>> numeric_row(b'{"inputs":[{"name":"x","shape":[1],"datatype":"FP64","data":[2]}]}',
    ...             InputLimits())
    {'x': 2.0}
    """
    if read_row_in_c is not None:
        row: dict[str, Any] | None = read_row_in_c(raw, limits.max_features)
        if row is not None:
            return row
    return read_row_in_python(raw, limits)


def row_sum(raw: bytes, params: dict[Any, Any], limits: InputLimits) -> float | None:
    """The sum a compiled linear model (``params``: `learners.linear.CompiledLinear`'s) adds
    for the row of the commonest body, read from its bytes in C without building the row:
    float for float what `numeric_row` then the model's sum give (`serving.inputs.linear_sum`
    does the same for `/v1`'s body). None for anything the C reader leaves to the others, a
    name given twice, or without the C reader: `numeric_row` and the rest then read it.

    >>> raw = b'{"inputs":[{"name":"x","shape":[1],"datatype":"FP64","data":[5]}]}'
    >>> row_sum(raw, {"x": (1.0, 2.0, 0.5)}, InputLimits())
    1.0
    """
    if read_row_dot_in_c is None:
        return None
    return read_row_dot_in_c(raw, params, limits.max_features)


def read_row_in_python(raw: bytes, limits: InputLimits) -> dict[str, Any] | None:
    """`numeric_row` read by C loops of Python's bytes (the C reader's fall-back): FP64, FP32
    or FP16 values become floats, INT64 values stay integers (each in range); None for anything
    else; when not None, the row is the one `parse_infer_body` gives, with no ``null``.

    ≈ 7 µs for 30 features, against ≈ 19 for `parse_infer_body` (orjson builds 90 objects).
    Why the row is exact: each name-to-value text (``middles``) is replaced by ``\\n:``, then
    each ``between`` by ``,`` (the first replacement cannot make a ``between``: it holds no
    newline, starts with ``]``, ends with neither ``:`` after a newline nor a space; the two
    texts never overlap). When exactly n colons and n - 1 commas are left and the text parses
    (orjson) as an object of n numbers, every colon and comma is one of those put in, outside
    the strings (an object of n entries needs that many), so the body was name, middle,
    value, between, name... with the very tokens the object holds.

    >>> read_row_in_python(b'{"inputs":[{"name":"x","shape":[1],"datatype":"FP64","data":[2]}]}',
    ...                    InputLimits())
    {'x': 2.0}
    >>> read_row_in_python(b'{"inputs":[{"name":"x","shape":[1],"datatype":"FP64","data":[null]}]}',
    ...                    InputLimits()) is None
    True
    """
    layout = _SPACED if raw.startswith(_SPACED.prefix) else _COMPACT
    if not (raw.startswith(layout.prefix) and raw.endswith(layout.suffix)):
        return None
    text = raw[len(layout.prefix) : -len(layout.suffix)]
    parts, datatype = text.split(layout.middles[0][0]), "FP64"  # FP64, the commonest
    if len(parts) == 1:
        parts, datatype = _split_middles(text, layout)
    n = len(parts) - 1
    if n > limits.max_features:
        return None
    tensors = b"\n:".join(parts).split(layout.between)
    if len(tensors) != n:
        return None
    text = b",".join(tensors)
    if text.count(b":") != n or text.count(b",") != n - 1:
        return None
    try:
        row = orjson.loads(b"{" + text + b"}")
    except orjson.JSONDecodeError:
        return None
    if len(row) != n:  # a name given twice
        return None
    kinds = set(map(type, row.values()))
    if datatype == "INT64":
        lo, hi = INT_RANGES["INT64"]
        ok = kinds == _INT and lo <= min(row.values()) and max(row.values()) <= hi
        return row if ok else None
    if kinds == _FLOAT:
        pass
    elif kinds <= _NUMBER:  # integers become floats, as `_check_value` makes them
        row = dict(zip(row, map(float, row.values()), strict=True))
    else:
        return None
    limit = FLOAT_OVERFLOW.get(datatype)  # FP32, FP16: in range, or left to the general reading
    if limit is not None and not (-limit < min(row.values()) and max(row.values()) < limit):
        return None
    return row


_FIELDS: Final = frozenset({"id", "parameters", "inputs", "outputs"})


def parse_infer_body(raw: bytes, limits: InputLimits) -> tuple[Any, list[dict[str, Any]], Any]:
    """``(id, rows, requested outputs)`` of an infer request body, or a `V2Error`.

    >>> body = b'{"id": "a", "inputs": [{"name": "x", "shape": [2], "datatype": "FP32",'
    >>> body += b' "data": [1, 2.5]}, {"name": "c", "shape": [2, 1], "datatype": "BYTES",'
    >>> body += b' "data": [["red"], ["blue"]]}]}'
    >>> parse_infer_body(body, InputLimits())
    ('a', [{'x': 1.0, 'c': 'red'}, {'x': 2.5, 'c': 'blue'}], None)
    >>> body = b'{"inputs": [{"name": "features", "shape": [1], "datatype": "BYTES",'
    >>> body += b' "data": ["{\\\\"x\\\\": 1}"]}]}'
    >>> parse_infer_body(body, InputLimits())
    (None, [{'x': 1}], None)
    """
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise V2Error(400, f"invalid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise V2Error(400, f"the body must be a JSON object, not {_type_name(body)}")
    if not body.keys() <= _FIELDS:
        unknown = sorted(set(body) - _FIELDS)
        raise V2Error(400, f"unknown field(s) {unknown}: use id, parameters, inputs, outputs")
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise V2Error(400, f"'id' must be a string, not {_type_name(request_id)}")
    _refuse_extensions("request", body.get("parameters"))
    outputs = body.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs
        ):
            raise V2Error(400, "'outputs' must be an array of objects with a 'name'")
        requested: set[str] = set()
        for o in outputs:
            where = f"output {o['name']!r}"
            if o["name"] in requested:  # each would be written again in full
                raise V2Error(400, f"{where} is requested twice")
            requested.add(o["name"])
            parameters = o.get("parameters")
            _refuse_extensions(where, parameters)
            if parameters is not None and "classification" in parameters:
                raise V2Error(400, f"{where}: the classification extension is not supported")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise V2Error(400, "'inputs' must be a non-empty array of tensors")
    if len(inputs) > limits.max_features:
        raise V2Error(400, f"{len(inputs)} inputs, the limit is {limits.max_features}")
    row = _one_row_of_numbers(inputs)
    if row is not None:
        return request_id, [row], outputs
    names: set[str] = set()
    for tensor in inputs:
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise V2Error(400, "every input must be an object with a 'name'")
        name = tensor["name"]
        if name in names:
            raise V2Error(400, f"input {name!r} is given twice")
        names.add(name)
        _refuse_extensions(f"input {name!r}", tensor.get("parameters"))
        datatype = tensor.get("datatype")
        if not isinstance(datatype, str) or datatype not in DATATYPES:
            allowed = ", ".join(sorted(DATATYPES))
            raise V2Error(400, f"input {name!r}: datatype {datatype!r} is not one of {allowed}")
        if "data" not in tensor:
            raise V2Error(400, f"input {name!r}: 'data' is missing")
    json_inputs = [t for t in inputs if _is_json_input(t)]
    if json_inputs and len(inputs) > 1:
        raise V2Error(
            400, "give either one input per feature or one BYTES input of JSON rows, not both"
        )
    rows: list[dict[str, Any]] = []
    n_rows: int | None = None
    for tensor in inputs:
        name, datatype = tensor["name"], tensor["datatype"]
        n = _rows(name, tensor.get("shape"), limits.max_instances)
        if n_rows is not None and n != n_rows:
            raise V2Error(400, f"input {name!r} has {n} rows, another input has {n_rows}")
        if n_rows is None:
            if n * len(inputs) > limits.max_cells:  # before a value is read
                raise V2Error(
                    400,
                    f"{n} rows of {len(inputs)} inputs: {n * len(inputs)} values, the limit is "
                    f"{limits.max_cells} (rows × inputs)",
                )
            n_rows = n
            rows = [{} for _ in range(n)]
        data = _flat(name, tensor["data"])
        if len(data) != n:
            raise V2Error(400, f"input {name!r}: shape {tensor['shape']} but {len(data)} values")
        if json_inputs:
            if datatype != "BYTES":
                raise V2Error(400, f"input {name!r}: JSON rows must have datatype BYTES")
            return request_id, [_json_row(name, text, limits) for text in data], outputs
        for row, value in zip(rows, data, strict=True):
            row[name] = _check_value(name, datatype, value)
    return request_id, rows, outputs
