"""The tensors of the Open Inference Protocol v2 (`serving.v2`): metadata of a served model,
requests parsed into rows of River features, answers into output tensors, and the errors.

Pure conversions, no routes: the router is in `serving.v2`, which documents the mapping.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Mapping
from typing import Any, Final

import orjson
from fastapi.responses import Response
from river import compose

from learners.predictor import ServedModel
from serving.inputs import InputLimits

INFER_ROUTE: Final = "/v2/models/{name}/infer"
PLATFORM: Final = "river"
JSON_INPUT: Final = "features"
PROBA_PREFIX: Final = "proba_"

_INT_RANGES: Final[dict[str, tuple[int, int]]] = {
    **{f"INT{b}": (-(2 ** (b - 1)), 2 ** (b - 1) - 1) for b in (8, 16, 32, 64)},
    **{f"UINT{b}": (0, 2**b - 1) for b in (8, 16, 32, 64)},
}
_FLOATS: Final = frozenset({"FP16", "FP32", "FP64"})
DATATYPES: Final = frozenset({"BOOL", "BYTES", *_INT_RANGES, *_FLOATS})
_SCALARS: Final = (int, float, str, bool, type(None))
_BINARY_HINT: Final = (
    "the binary tensor extension is not supported: send JSON tensors (tritonclient: "
    "binary_data=False in InferInput.set_data_from_numpy and in every InferRequestedOutput, "
    "and request the outputs explicitly)"
)
_SHM_KEYS: Final = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")

Observe = Callable[[str, str, int, float], None]


class V2Error(Exception):
    """A request answered with ``{"error": message}`` and ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def package_version() -> str:
    """The installed riverstream version (``0+unknown`` when run from an uninstalled tree)."""
    try:
        return importlib.metadata.version("riverstream")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - installed in tests
        return "0+unknown"


def _json(content: Any, status: int = 200) -> Response:
    body = orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)
    return Response(body, status_code=status, media_type="application/json")


def _error(status: int, message: str) -> Response:
    return _json({"error": message}, status)


def _plain(value: Any) -> Any:
    """A JSON-native Python value (numpy scalars become their Python equivalent)."""
    if value is None or type(value) in (bool, int, float, str):
        return value
    item = getattr(value, "item", None)
    return item() if callable(item) else value


def label_text(label: Any) -> str:
    """A label as text, as ``/v1`` writes it as a JSON object key.

    >>> [label_text(v) for v in (True, False, 3, 2.5, "setosa", None)]
    ['true', 'false', '3', '2.5', 'setosa', '']
    """
    label = _plain(label)
    if label is None:
        return ""
    if isinstance(label, bool):
        return "true" if label else "false"
    return str(label)


def label_datatype(labels: list[Any]) -> str:
    """The datatype of a ``prediction`` tensor holding ``labels``.

    >>> label_datatype([True, False]), label_datatype([1, 2]), label_datatype([1, 2.5])
    ('BOOL', 'INT64', 'FP64')
    >>> label_datatype(["a", 1]), label_datatype([None, True]), label_datatype([])
    ('BYTES', 'BYTES', 'BYTES')
    """
    if not labels:
        return "BYTES"
    if all(type(v) is bool for v in labels):
        return "BOOL"
    if all(type(v) is int for v in labels):
        lo, hi = _INT_RANGES["INT64"]
        return "INT64" if all(lo <= v <= hi for v in labels) else "BYTES"
    if all(type(v) in (int, float) for v in labels):
        return "FP64"
    return "BYTES"


def _tensor_data(datatype: str, labels: list[Any]) -> list[Any]:
    if datatype == "BYTES":
        return [label_text(v) for v in labels]
    if datatype == "FP64":
        return [float(v) for v in labels]
    return labels


# -- metadata ----------------------------------------------------------------------------------
def known_features(estimator: Any) -> list[str] | None:
    """The features a model has learned, when its first step says (sorted), else None.

    Only tables that learning alone writes are read: River scalers such as ``MinMaxScaler``
    (and a ``StandardScaler``'s ``vars``) gain a key for every feature a prediction sees.

    >>> from river import linear_model, preprocessing
    >>> model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    >>> model.learn_one({"b": 1.0, "a": 2.0}, True)
    >>> known_features(model), known_features(linear_model.LogisticRegression())
    (['a', 'b'], None)
    """
    first = estimator
    while isinstance(first, compose.Pipeline):
        first = next(iter(first.steps.values()))
    for attribute in ("counts", "weights"):  # StandardScaler, linear models
        table = getattr(first, attribute, None)
        if isinstance(table, Mapping):
            names = sorted(k for k in table if isinstance(k, str))
            if names:
                return names
    return None


def known_classes(served: ServedModel) -> list[Any]:
    """A classifier's classes: those of its probabilities for an empty row, else those its final
    step lists (``classes``, as Hoeffding trees; ``classifiers``, as one-vs-rest), else none."""
    if served.kind != "classifier":
        return []
    try:
        _, proba = served.predict({})
    except Exception:  # a model that cannot answer an empty row (a Select, say)
        proba = None
    classes: Any = proba
    if not classes:
        final = served.estimator
        while isinstance(final, compose.Pipeline):
            final = list(final.steps.values())[-1]
        classes = getattr(final, "classes", None) or getattr(final, "classifiers", None)
    if not isinstance(classes, Mapping | set | frozenset):
        return []
    return sorted((_plain(c) for c in classes), key=label_text)


def model_metadata(served: ServedModel) -> dict[str, Any]:
    """The ``GET /v2/models/{name}`` answer for ``served``."""
    features = known_features(served.estimator)
    if features:
        inputs = [{"name": f, "datatype": "FP64", "shape": [-1]} for f in features]
    else:
        inputs = [{"name": JSON_INPUT, "datatype": "BYTES", "shape": [-1]}]
    if served.kind == "classifier":
        classes = known_classes(served)
        outputs = [{"name": "prediction", "datatype": label_datatype(classes), "shape": [-1]}]
        outputs += [
            {"name": PROBA_PREFIX + label_text(c), "datatype": "FP64", "shape": [-1]}
            for c in classes
        ]
    else:
        outputs = [{"name": "prediction", "datatype": "FP64", "shape": [-1]}]
    return {
        "name": served.name,
        "versions": [str(served.version)],
        "platform": PLATFORM,
        "inputs": inputs,
        "outputs": outputs,
    }


# -- requests ----------------------------------------------------------------------------------
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
    elif datatype in _FLOATS:
        ok = kind in (int, float)
        value = float(value) if ok else value
    elif datatype == "BYTES":
        ok = kind is str
    else:
        lo, hi = _INT_RANGES[datatype]
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
        if not isinstance(value, _SCALARS):
            raise V2Error(
                400,
                f"input {name!r}: feature {feature!r} must be a number, a string, a boolean or "
                f"null, not {_type_name(value)}",
            )
    return row


def _is_json_input(tensor: dict[str, Any]) -> bool:
    parameters = tensor.get("parameters") or {}
    content_type = parameters.get("content_type") if isinstance(parameters, dict) else None
    if content_type is not None:
        return bool(content_type == "json")
    return bool(tensor.get("name") == JSON_INPUT and tensor.get("datatype") == "BYTES")


def _refuse_extensions(where: str, parameters: Any) -> None:
    if parameters is None:
        return
    if not isinstance(parameters, dict):
        raise V2Error(400, f"{where}: 'parameters' must be an object")
    if "binary_data_size" in parameters or parameters.get("binary_data") is True:
        raise V2Error(400, f"{where}: {_BINARY_HINT}")
    if parameters.get("binary_data_output") is True:
        raise V2Error(400, f"{where}: {_BINARY_HINT}")
    if any(k in parameters for k in _SHM_KEYS):
        raise V2Error(400, f"{where}: the shared-memory extension is not supported")


_ONE_ROW: Final = [1]


def _one_row_of_numbers(inputs: list[Any]) -> dict[str, float] | None:
    """The row of the commonest request, in one pass: one input per feature, each exactly
    ``{"name", "shape": [1], "datatype": FP16/32/64, "data": [number]}``. None for anything
    else (parameters, more rows, other types, a problem): the general checks take over, and
    say what is wrong. The same row as theirs (integers become floats, as `_check_value`)."""
    row: dict[str, float] = {}
    for tensor in inputs:
        if type(tensor) is not dict or len(tensor) != 4:
            return None
        name, data = tensor.get("name"), tensor.get("data")
        if (
            type(name) is not str
            or name in row
            or tensor.get("datatype") not in _FLOATS
            or tensor.get("shape") != _ONE_ROW
            or type(data) is not list
            or len(data) != 1
        ):
            return None
        value = data[0]
        kind = type(value)
        if kind is float:
            row[name] = value
        elif kind is int:
            row[name] = float(value)
        else:
            return None
    return row


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
    unknown = sorted(set(body) - {"id", "parameters", "inputs", "outputs"})
    if unknown:
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
        for o in outputs:
            _refuse_extensions(f"output {o['name']!r}", o.get("parameters"))
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
        if datatype not in DATATYPES:
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


def output_tensors(
    predictions: list[Any],
    probabilities: list[Mapping[Any, float] | None],
    extra: Mapping[str, list[str]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Output tensors by name: ``prediction``, one ``proba_<class>`` per class that any row's
    probabilities give (none when no row has probabilities), then ``extra`` BYTES columns."""
    predictions = [_plain(p) for p in predictions]
    datatype = label_datatype(predictions)
    n = len(predictions)
    tensors = {
        "prediction": {
            "name": "prediction",
            "datatype": datatype,
            "shape": [n],
            "data": _tensor_data(datatype, predictions),
        }
    }
    classes = {label_text(c): c for proba in probabilities for c in proba or {}}
    for text in sorted(classes):
        c = classes[text]
        name = PROBA_PREFIX + text
        data = [float(_plain((proba or {}).get(c, 0.0))) for proba in probabilities]
        tensors[name] = {"name": name, "datatype": "FP64", "shape": [n], "data": data}
    for name, column in (extra or {}).items():
        tensors[name] = {"name": name, "datatype": "BYTES", "shape": [n], "data": column}
    return tensors


def select_outputs(
    tensors: dict[str, dict[str, Any]], requested: list[dict[str, Any]] | None
) -> list[dict[str, Any]]:
    """The requested outputs in the requested order (all when none are named, as Triton does);
    an unknown name is a 400."""
    if not requested:
        return list(tensors.values())
    missing = [o["name"] for o in requested if o["name"] not in tensors]
    if missing:
        raise V2Error(400, f"unknown output(s) {missing}: this model gives {sorted(tensors)}")
    return [tensors[o["name"]] for o in requested]


def infer_outputs(
    served: ServedModel, rows: list[dict[str, Any]], requested: list[dict[str, Any]] | None
) -> list[dict[str, Any]]:
    """The output tensors for ``rows``; the model's input errors propagate."""
    predictions: list[Any] = []
    probabilities: list[Mapping[Any, float] | None] = []
    for x in rows:
        prediction, proba = served.predict(x)
        predictions.append(prediction)
        probabilities.append(proba if served.kind == "classifier" else None)
    return select_outputs(output_tensors(predictions, probabilities), requested)
