"""The Open Inference Protocol v2 (KServe, Triton, MLServer) over the served models.

`v2_router` returns an `APIRouter` that `serving.app` includes; it reads the same follower as
``/v1``, so for the same model version both protocols give the same numbers (each row goes
through `learners.predictor.ServedModel.predict`, the function ``/v1`` calls).

Routes:

- ``GET /v2`` → ``{"name": "riverstream", "version": <package version>, "extensions": []}``.
- ``GET /v2/health/live`` → 200 ``{"live": true}``; ``GET /v2/health/ready`` → 200
  ``{"ready": true}`` when every expected model is loaded (the rule of ``/readyz``), else 503.
- ``GET /v2/models/{name}[/versions/{v}]`` → metadata ``{"name", "versions", "platform":
  "river", "inputs", "outputs"}`` (``versions`` is the served version, as a string);
  ``GET /v2/models/{name}[/versions/{v}]/ready`` → 200 ``{"name", "ready": true}``.
- ``POST /v2/models/{name}[/versions/{v}]/infer`` → ``{"model_name", "model_version", "id",
  "outputs"}`` (``id`` echoed when the request has one).

Only the served version of a model exists here: ``/versions/{v}`` with any other ``v`` is a 404
naming the served one.

Mapping of features to inputs (a request uses one of the two forms):

(a) **One input per feature**, like MLServer's ``parameters.content_type: "pd"`` (one column
    per feature): the input's name is the feature's name, its shape ``[n]`` or ``[n, 1]`` for
    ``n`` rows (all inputs have the same ``n``), its data the ``n`` values, flat or nested per
    row. Datatypes: ``BOOL`` (JSON booleans), ``INT8``…``INT64`` and ``UINT8``…``UINT64``
    (integers in range), ``FP16``/``FP32``/``FP64`` (numbers, given to the model as floats) and
    ``BYTES`` (strings: categorical features). A ``null`` value is a missing feature in that
    row, as in ``/v1``.
(b) **One BYTES input holding a JSON object per row**: named ``features`` (or any name, with
    ``parameters.content_type: "json"``), shape ``[n]`` or ``[n, 1]``, each element a string
    such as ``"{\\"x\\": 1.5, \\"color\\": \\"red\\"}"`` — the ``features`` object of ``/v1``.
    Rows may have different features (River models take sparse rows).

Either way the model gets each row's features in the order given (the inputs', or the JSON
object's keys), as ``/v1`` passes its ``features`` object: River sums in that order, so only
the same order gives the same last bit of a probability or a regression.

Model metadata lists one ``FP64`` input per feature the model has learned, when it tells
(the first step of a pipeline: a ``StandardScaler``'s counts or a linear model's weights, both
written by learning only, never by a prediction), else the single ``features`` BYTES input. Both forms are accepted whatever the metadata says.

Outputs, each of shape ``[n]``:

- ``prediction``: the label for classifiers, the value for regressors, the anomaly score for
  anomaly detectors. Its datatype follows the predictions: ``BOOL`` when all are booleans,
  ``INT64`` when all are integers, ``FP64`` when all are numbers, else ``BYTES`` (the labels as
  strings: booleans as ``true``/``false``, a missing prediction as ``""``).
- classifiers: one ``FP64`` output per class, ``proba_<class>`` (the class as in ``/v1``'s
  JSON keys: ``proba_true``, ``proba_false``, ``proba_setosa``, ``proba_3``), the probability
  of that class in each row (0 when the model does not give that class for a row). Numeric
  tensors rather than one JSON string: clients read them straight into arrays.

A request's ``outputs`` selects among these by name (an unknown one is a 400); without it (or
with an empty list), all are returned.

Graphs (`serving.graphs`, when the app passes its service): ``/v2/models/{name}`` also answers
for a served graph, when no model has that name. Its metadata has platform
``riverstream-graph``, the ``features`` BYTES input (rules may read features no model knows),
the outputs its members suggest plus five BYTES outputs: ``decided_by``, ``decision`` and
``reason`` (``""`` when no rule decided), ``path`` (the choices made, a JSON array) and
``versions`` (every model used and its version, a JSON object). It is ready when every member
is loaded (else 503 naming them). An infer request's rows are answered by the function of
``/v1/graphs/{name}/predict`` (one view of the served models for all rows; ``model_version``
is the graph's version); the request ``id`` is every row's id (sticky splits, shadow
sampling); shadows run after the response. Such a request is counted under both routes in
``riverstream_http_requests_total``.

Errors are ``{"error": "..."}``: 404 for an unknown model or version, 503 for a model known
but not loaded yet (or a server not ready), 400 for everything the client can fix — invalid
JSON, a malformed tensor, a wrong datatype or shape, features the model cannot use, a body
larger than the limit. The binary tensor extension (header
``Inference-Header-Content-Length``, input ``parameters.binary_data_size``, output
``parameters.binary_data: true``, request ``parameters.binary_data_output: true``) and shared
memory are refused with a 400 that says what to send instead: ``tritonclient`` sends binary
tensors unless told ``binary_data=False`` on every ``InferInput.set_data_from_numpy`` and
``InferRequestedOutput``.
"""

from __future__ import annotations

import importlib.metadata
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from river import compose
from starlette.background import BackgroundTask

from learners.predictor import MODEL_INPUT_ERRORS, ServedModel
from schemas.graphs import GraphSpec
from serving.inputs import InputLimits
from stream.store.follower import SnapshotFollower

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


# -- graphs ------------------------------------------------------------------------------------
class ServedGraphLike(Protocol):
    """What v2 reads of a served graph (`stream.store.graph_follower.ServedGraph`)."""

    @property
    def version(self) -> int: ...

    @property
    def spec(self) -> GraphSpec: ...


class GraphSource(Protocol):
    def get(self, name: str) -> ServedGraphLike | None: ...


class GraphBackend(Protocol):
    """What v2 uses of the graph service (`serving.graphs.GraphService`): its follower, the
    answer of ``/v1/graphs/{name}/predict`` to a body, and running that answer's shadows."""

    @property
    def follower(self) -> GraphSource: ...

    def answer(self, name: str, raw: bytes | None) -> tuple[int, dict[str, Any], Any]: ...

    def run_later(self, job: Any) -> None: ...


GRAPH_PLATFORM: Final = "riverstream-graph"
GRAPH_OUTPUTS: Final = ("decided_by", "decision", "reason", "path", "versions")


def graph_metadata(
    name: str, graph: ServedGraphLike, models: Mapping[str, ServedModel]
) -> dict[str, Any]:
    """The ``GET /v2/models/{graph}`` answer: outputs as the members loaded here suggest."""
    members = [models[m] for m in graph.spec.model_names() if m in models]
    kinds = {m.kind for m in members}
    if kinds == {"classifier"}:
        classes = {label_text(c): c for m in members for c in known_classes(m)}
        ordered = [classes[t] for t in sorted(classes)]
        outputs = [{"name": "prediction", "datatype": label_datatype(ordered), "shape": [-1]}]
        outputs += [
            {"name": PROBA_PREFIX + label_text(c), "datatype": "FP64", "shape": [-1]}
            for c in ordered
        ]
    else:
        datatype = "FP64" if kinds and "classifier" not in kinds else "BYTES"
        outputs = [{"name": "prediction", "datatype": datatype, "shape": [-1]}]
    outputs += [{"name": o, "datatype": "BYTES", "shape": [-1]} for o in GRAPH_OUTPUTS]
    return {
        "name": name,
        "versions": [str(graph.version)],
        "platform": GRAPH_PLATFORM,
        "inputs": [{"name": JSON_INPUT, "datatype": "BYTES", "shape": [-1]}],
        "outputs": outputs,
    }


def _v1_problems(detail: Any) -> str:
    """``/v1``'s error detail (a message, or a list of ``{"loc", "msg", "type"}``) as text."""
    if not isinstance(detail, list):
        return str(detail)
    return "; ".join(
        f"{'.'.join(str(p) for p in d.get('loc', [])[1:]) or 'body'}: {d.get('msg')}"
        for d in detail
    )


def graph_outputs(content: dict[str, Any], requested: list[dict[str, Any]] | None) -> list[Any]:
    """Output tensors of a ``/v1/graphs`` batch answer."""
    answers = content["predictions"]
    extra = {
        "decided_by": [label_text(a["decided_by"]) for a in answers],
        "decision": [label_text(a["decision"]) for a in answers],
        "reason": [label_text(a["reason"]) for a in answers],
        "path": [orjson.dumps(list(a["path"])).decode() for a in answers],
        "versions": [orjson.dumps(a["versions"]).decode() for a in answers],
    }
    tensors = output_tensors(
        [a["prediction"] for a in answers], [a["probabilities"] for a in answers], extra
    )
    return select_outputs(tensors, requested)


# -- the router --------------------------------------------------------------------------------
async def _read_body(request: Request, limit: int) -> bytes | None:
    """The body, or None as soon as it exceeds ``limit`` bytes."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def v2_router(
    follower: SnapshotFollower,
    *,
    limits: InputLimits,
    max_body_bytes: int,
    observe: Observe | None = None,
    graphs: GraphBackend | None = None,
) -> APIRouter:
    """The Open Inference Protocol v2 routes over ``follower``'s models (and ``graphs``'
    graphs, when given: a name is looked up among the models first).

    ``observe(route, model, status, seconds)`` is called for every infer request (the
    Prometheus request metrics of `serving.telemetry`).
    """
    router = APIRouter(prefix="/v2", tags=["Open Inference Protocol v2"])
    server = {"name": "riverstream", "version": package_version(), "extensions": []}

    def find(name: str, version: str | None) -> ServedModel | ServedGraphLike:
        """The served model or graph ``name`` (at ``version`` if given), or a 404/503."""
        target: ServedModel | ServedGraphLike | None = follower.get(name)
        if target is None:
            if follower.is_known(name):
                raise V2Error(503, f"model {name!r} is not loaded yet")
            target = graphs.follower.get(name) if graphs is not None else None
            if target is None:
                raise V2Error(404, f"model {name!r} is unknown")
        if version is not None and version != str(target.version):
            what = "model" if isinstance(target, ServedModel) else "graph"
            raise V2Error(
                404,
                f"version {version!r} of {what} {name!r} is not served (serving {target.version})",
            )
        return target

    def metadata(name: str, version: str | None) -> Response:
        try:
            target = find(name, version)
        except V2Error as exc:
            return _error(exc.status, exc.message)
        if isinstance(target, ServedModel):
            return _json(model_metadata(target))
        return _json(graph_metadata(name, target, follower.served))

    def ready(name: str, version: str | None) -> Response:
        try:
            target = find(name, version)
        except V2Error as exc:
            return _error(exc.status, exc.message)
        if not isinstance(target, ServedModel):
            missing = [m for m in target.spec.model_names() if follower.get(m) is None]
            if missing:
                return _error(503, f"graph {name!r}: model(s) {missing} not loaded")
        return _json({"name": name, "ready": True})

    def answer(
        name: str, version: str | None, raw: bytes | None, headers: Mapping[str, str]
    ) -> tuple[dict[str, Any], Any]:
        """The answer to an infer request, and the shadow job of a graph's answer (or None)."""
        target = find(name, version)
        if "inference-header-content-length" in headers:
            raise V2Error(400, _BINARY_HINT)
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding != "identity":
            raise V2Error(400, f"Content-Encoding {encoding!r} is not supported: send plain JSON")
        if raw is None:
            raise V2Error(400, f"body larger than {max_body_bytes} bytes")
        request_id, rows, requested = parse_infer_body(raw, limits)
        job = None
        if isinstance(target, ServedModel):
            try:
                outputs = infer_outputs(target, rows, requested)
            except MODEL_INPUT_ERRORS as exc:
                raise V2Error(
                    400, f"the model cannot use these features: {type(exc).__name__}: {exc}"
                ) from None
            served_version = target.version
        else:
            assert graphs is not None
            body: dict[str, Any] = {"instances": rows}
            if request_id is not None:  # keys sticky splits and shadow sampling, every row
                body["ids"] = [request_id] * len(rows)
            status, content, job = graphs.answer(name, orjson.dumps(body))
            if status != 200:
                message = _v1_problems(content.get("detail"))
                raise V2Error(400 if status in (413, 422) else status, message)
            outputs = graph_outputs(content, requested)
            served_version = content["graph_version"]
        answer: dict[str, Any] = {"model_name": name, "model_version": str(served_version)}
        if request_id is not None:
            answer["id"] = request_id
        answer["outputs"] = outputs
        return answer, job

    async def infer(name: str, version: str | None, request: Request) -> Response:
        started = time.perf_counter()
        raw = await _read_body(request, max_body_bytes)
        try:
            content, job = answer(name, version, raw, request.headers)
            response = _json(content)
            if job is not None and graphs is not None:  # shadows, once the response is sent
                response.background = BackgroundTask(graphs.run_later, job)
        except V2Error as exc:
            response = _error(exc.status, exc.message)
        if observe is not None:
            found = follower.is_known(name) or (
                graphs is not None and graphs.follower.get(name) is not None
            )
            label = name if found else "none"
            observe(INFER_ROUTE, label, response.status_code, time.perf_counter() - started)
        return response

    @router.get("", summary="Server metadata")
    async def server_metadata() -> Response:
        return _json(server)

    @router.get("/health/live", summary="The server is live")
    async def live() -> Response:
        return _json({"live": True})

    @router.get("/health/ready", summary="Every expected model is loaded (as /readyz)")
    async def server_ready() -> Response:
        status = follower.status()
        if status["ready"]:
            return _json({"ready": True})
        missing = status["missing"] or "no model found yet"
        return _json({"ready": False, "error": f"not ready: missing {missing}"}, 503)

    @router.get("/models/{name}", summary="Model metadata")
    async def model_meta(name: str) -> Response:
        return metadata(name, None)

    @router.get("/models/{name}/versions/{version}", summary="Model version metadata")
    async def version_meta(name: str, version: str) -> Response:
        return metadata(name, version)

    @router.get("/models/{name}/ready", summary="The model is loaded")
    async def model_ready(name: str) -> Response:
        return ready(name, None)

    @router.get("/models/{name}/versions/{version}/ready", summary="The model version is served")
    async def version_ready(name: str, version: str) -> Response:
        return ready(name, version)

    @router.post("/models/{name}/infer", summary="Infer with the served version")
    async def model_infer(name: str, request: Request) -> Response:
        return await infer(name, None, request)

    @router.post("/models/{name}/versions/{version}/infer", summary="Infer with a version")
    async def version_infer(name: str, version: str, request: Request) -> Response:
        return await infer(name, version, request)

    return router
