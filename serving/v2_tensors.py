"""The tensors of the Open Inference Protocol v2 (`serving.v2`): metadata of a served model,
answers into output tensors, labels and datatypes, and the errors. Requests are parsed in
`serving.v2_requests`.

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

INFER_ROUTE: Final = "/v2/models/{name}/infer"
PLATFORM: Final = "river"
JSON_INPUT: Final = "features"
PROBA_PREFIX: Final = "proba_"

INT_RANGES: Final[dict[str, tuple[int, int]]] = {
    **{f"INT{b}": (-(2 ** (b - 1)), 2 ** (b - 1) - 1) for b in (8, 16, 32, 64)},
    **{f"UINT{b}": (0, 2**b - 1) for b in (8, 16, 32, 64)},
}
FLOATS: Final = frozenset({"FP16", "FP32", "FP64"})
FLOAT_MAX: Final = {"FP16": "65504", "FP32": "3.4028234663852886e+38"}
"""The largest finite value of the narrow float datatypes, as the errors write it."""
FLOAT_OVERFLOW: Final = {"FP16": 65520.0, "FP32": 2.0**128 - 2.0**103}
"""The least magnitude that each narrow float datatype rounds to infinity, halfway between its
largest finite value and the next power of two (a tie rounds to the even one, infinity): a value
at or past it is out of range. Not the largest value itself: a float32 written as shortly as
float32 allows (Go, numpy's ``str``) gives ``3.4028235e38`` for the largest, above it as a double.
FP64 needs none: JSON numbers past its range are refused when read."""
DATATYPES: Final = frozenset({"BOOL", "BYTES", *INT_RANGES, *FLOATS})
SCALARS: Final = (int, float, str, bool, type(None))
BINARY_HINT: Final = (
    "the binary tensor extension is not supported: send JSON tensors (tritonclient: "
    "binary_data=False in InferInput.set_data_from_numpy and in every InferRequestedOutput, "
    "and request the outputs explicitly)"
)
SHM_KEYS: Final = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")

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


_BOOL, _INT, _NUMBER = frozenset({bool}), frozenset({int}), frozenset({int, float})


def label_datatype(labels: list[Any]) -> str:
    """The datatype of a ``prediction`` tensor holding ``labels``.

    >>> label_datatype([True, False]), label_datatype([1, 2]), label_datatype([1, 2.5])
    ('BOOL', 'INT64', 'FP64')
    >>> label_datatype(["a", 1]), label_datatype([None, True]), label_datatype([])
    ('BYTES', 'BYTES', 'BYTES')
    """
    kinds = set(map(type, labels))  # by C loops: one answer or a thousand
    if not kinds:
        return "BYTES"
    if kinds == _BOOL:
        return "BOOL"
    if kinds == _INT:
        lo, hi = INT_RANGES["INT64"]
        return "INT64" if lo <= min(labels) and max(labels) <= hi else "BYTES"
    if kinds <= _NUMBER:
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
    an unknown name is a 400 (and a name requested twice already was one, from
    `serving.v2_requests.parse_infer_body`)."""
    if not requested:
        return list(tensors.values())
    missing = [o["name"] for o in requested if o["name"] not in tensors]
    if missing:
        raise V2Error(400, f"unknown output(s) {missing}: this model gives {sorted(tensors)}")
    return [tensors[o["name"]] for o in requested]


def _one_row_prediction(prediction: Any) -> tuple[str, Any]:
    """The datatype and the value of a one-row ``prediction`` tensor (`label_datatype`)."""
    prediction = _plain(prediction)
    kind = prediction.__class__
    if kind is bool:
        return "BOOL", prediction
    if kind is float:
        return "FP64", prediction
    if kind is int and _INT64_LOW <= prediction <= _INT64_HIGH:
        return "INT64", prediction
    return "BYTES", label_text(prediction)


_INT64_LOW, _INT64_HIGH = INT_RANGES["INT64"]
_PREDICTION_JSON: Final = {
    t: b'{"name":"prediction","datatype":"%b","shape":[1],"data":[' % t.encode()
    for t in ("BOOL", "FP64", "INT64", "BYTES")
}
_BOOL_PREDICTION: Final = {
    label: _PREDICTION_JSON["BOOL"] + orjson.dumps(label) + b"]}" for label in (False, True)
}
"""The whole ``prediction`` tensor of a one-row boolean prediction."""
_CACHED_LABELS: Final = frozenset({bool, int, str})
"""Labels whose text equal labels share (not floats: 0.0 == -0.0)."""
_CLASS_JSON: dict[tuple[tuple[Any, ...], tuple[type, ...]], tuple[tuple[Any, bytes], ...]] = {}


def _class_tensors(proba: Mapping[Any, float]) -> tuple[tuple[Any, bytes], ...]:
    """Each class of ``proba`` in the order of `output_tensors`, with the JSON of its tensor
    up to its value; kept for the next answer with the same classes (of the same types)."""
    types = tuple(map(type, proba))
    key = (tuple(proba), types)
    found = _CLASS_JSON.get(key)
    if found is None:
        classes = {label_text(c): c for c in proba}
        found = tuple(
            (
                classes[text],
                b',{"name":%b,"datatype":"FP64","shape":[1],"data":['
                % orjson.dumps(PROBA_PREFIX + text),
            )
            for text in sorted(classes)
        )
        if _CACHED_LABELS.issuperset(types):
            if len(_CLASS_JSON) >= 256:  # a bound, for models whose classes keep changing
                _CLASS_JSON.clear()
            _CLASS_JSON[key] = found
    return found


(_, _PROBA_FALSE), (_, _proba_true) = _class_tensors({False: 0.0, True: 0.0})  # false first
_PROBA_TRUE: Final = b"]}" + _proba_true  # closes proba_false's tensor
"""`binary_answer`'s pieces: each class's tensor up to its value."""


def answer_head(fields: dict[str, Any]) -> bytes:
    """The JSON of an answer's ``fields`` up to its ``outputs``: `one_row_answer`'s head."""
    return orjson.dumps(fields, option=orjson.OPT_NON_STR_KEYS)[:-1] + b',"outputs":['


def one_row_answer(
    head: bytes, prediction: Any, proba: Mapping[Any, float] | None, tail: bytes = b""
) -> bytes:
    """``orjson.dumps({**fields, "outputs": [...]})`` of one row's answer with all its output
    tensors (`output_tensors`), ``head`` being `answer_head` of the fields and ``tail`` the
    JSON of the tensors after the probabilities (a graph's, `serving.v2_graphs.graph_row_tail`):
    the same bytes, from pieces of JSON (≈ 1.5 µs instead of 3.4 for a binary classifier), for
    the commonest answer."""
    kind = prediction.__class__
    dumps = orjson.dumps
    if kind is bool:  # the commonest labels, without the calls
        parts = [head, _BOOL_PREDICTION[prediction]]
    else:
        if kind is float:
            datatype, value = "FP64", prediction
        else:
            datatype, value = _one_row_prediction(prediction)
        parts = [head, _PREDICTION_JSON[datatype], dumps(value), b"]}"]
    if proba:
        for c, tensor in _class_tensors(proba):
            p = proba[c]
            parts += (tensor, dumps(p if p.__class__ is float else float(_plain(p))), b"]}")
    parts += (tail, b"]}")
    return b"".join(parts)


def binary_answer(head: bytes, prediction: bool, proba: Mapping[bool, float]) -> bytes:
    """`one_row_answer` of a classifier answering ``{False: q, True: p}`` (a compiled linear
    model's `learners.predictor.ServedModel.predict_sum`): the same bytes, in a third of its
    instructions when ``q`` and ``p`` are floats (no loop over the classes, their pieces known).

    >>> head = answer_head({"model_name": "m"})
    >>> binary_answer(head, True, {False: 0.25, True: 0.75}) == one_row_answer(
    ...     head, True, {False: 0.25, True: 0.75})
    True
    """
    q, p = proba[False], proba[True]
    if q.__class__ is not float or p.__class__ is not float:  # a loss of numpy's, say
        return one_row_answer(head, prediction, proba)
    dumps = orjson.dumps
    return b"".join((
        head, _BOOL_PREDICTION[prediction], _PROBA_FALSE, dumps(q), _PROBA_TRUE, dumps(p),
        b"]}]}",
    ))  # fmt: skip


def infer_outputs(
    served: ServedModel, rows: list[dict[str, Any]], requested: list[dict[str, Any]] | None
) -> list[dict[str, Any]]:
    """The output tensors for ``rows``; the model's input errors propagate (the commonest
    answer, one row with all its outputs, is rendered by `one_row_answer` instead)."""
    predictions: list[Any] = []
    probabilities: list[Mapping[Any, float] | None] = []
    for x in rows:
        prediction, proba = served.predict(x)
        predictions.append(prediction)
        probabilities.append(proba if served.kind == "classifier" else None)
    return select_outputs(output_tensors(predictions, probabilities), requested)
