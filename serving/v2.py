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
    (integers in range), ``FP16``/``FP32``/``FP64`` (numbers, given to the model as floats;
    ``FP16`` and ``FP32`` ones in range: under 65520 and 2^128 - 2^103 in magnitude, those the
    datatype does not round to infinity) and ``BYTES`` (strings: categorical features). A
    ``null`` value is a missing feature in that row, as in ``/v1``. At most
    `serving.inputs.InputLimits.max_cells` values in all (rows × inputs).
(b) **One BYTES input holding a JSON object per row**: named ``features`` (without
    ``parameters.content_type``, or with ``"str"``, as MLServer's StringCodec sends it, or
    ``"json"``), or any name with ``parameters.content_type: "json"``; shape ``[n]`` or
    ``[n, 1]``, each element a string such as ``"{\\"x\\": 1.5, \\"color\\": \\"red\\"}"`` — the
    ``features`` object of ``/v1``. Rows may have different features (River models take sparse
    rows).

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

A request's ``outputs`` selects among these by name (an unknown one, or one named twice, is a
400); without it (or with an empty list), all are returned.

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
JSON, a malformed tensor, a wrong datatype, shape or value, too many values, an output
requested twice, features the model cannot use, a body larger than the limit. The binary
tensor extension (header ``Inference-Header-Content-Length``, input
``parameters.binary_data_size``, output ``parameters.binary_data: true``, request
``parameters.binary_data_output: true``) and shared memory are refused with a 400 that says
what to send instead: ``tritonclient`` sends binary tensors unless told ``binary_data=False``
on every ``InferInput.set_data_from_numpy`` and ``InferRequestedOutput``. Triton's
classification extension (an output's ``parameters.classification``) is a 400 too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.background import BackgroundTask
from starlette.types import ASGIApp

from learners.predictor import MODEL_INPUT_ERRORS, ServedModel
from serving import openapi
from serving.asgi import request_body
from serving.inputs import InputLimits
from serving.v2_fast import V2InferFastPath
from serving.v2_graphs import (
    GraphBackend,
    ServedGraphLike,
    graph_metadata,
    graph_outputs,
    graph_row_tail,
    v1_problems,
)
from serving.v2_requests import numeric_row, parse_infer_body, row_sum
from serving.v2_tensors import (
    BINARY_HINT,
    INFER_ROUTE,
    Observe,
    V2Error,
    _error,
    _json,
    answer_head,
    binary_answer,
    infer_outputs,
    model_metadata,
    one_row_answer,
    package_version,
)
from stream.store.follower import SnapshotFollower


def v2_router(
    follower: SnapshotFollower,
    *,
    limits: InputLimits,
    max_body_bytes: int,
    observe: Observe | None = None,
    graphs: GraphBackend | None = None,
    fast_paths: list[Callable[[ASGIApp], V2InferFastPath]] | None = None,
) -> APIRouter:
    """The Open Inference Protocol v2 routes over ``follower``'s models (and ``graphs``'
    graphs, when given: a name is looked up among the models first).

    ``observe(route, model, status, seconds)`` is called for every infer request (the
    Prometheus request metrics of `serving.telemetry`). ``fast_paths``: gets a wrapper that
    answers the infer routes in raw ASGI (`V2InferFastPath`), for the app to put in front.
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

    heads: dict[str, tuple[tuple[Any, ...], bytes]] = {}  # by model: state named, head

    def head_of(name: str, served: ServedModel) -> bytes:
        """`answer_head` of a model's answers (``model_version`` and ``samples_learned`` name
        the state answering), kept while the model serves the same state."""
        state = (served.version, served.samples_learned, served.live)
        kept = heads.get(name)
        if kept is None or kept[0] != state:
            fields = _answer_fields(name, served.version, None, _parameters(served))
            kept = heads[name] = (state, answer_head(fields))
        return kept[1]

    graph_heads: dict[str, tuple[int, bytes]] = {}  # by graph: version, head

    def graph_head(name: str, version: int) -> bytes:
        """`answer_head` of a graph's answers, kept while the graph serves the same version."""
        kept = graph_heads.get(name)
        if kept is None or kept[0] != version:
            kept = graph_heads[name] = (
                version,
                answer_head(_answer_fields(name, version, None, None)),
            )
        return kept[1]

    def answer(
        name: str, version: str | None, raw: bytes | None, headers: Mapping[str, str]
    ) -> tuple[dict[str, Any] | bytes, Any]:
        """The answer to an infer request (or its JSON, for the commonest), and the shadow job
        of a graph's answer (or None)."""
        target = find(name, version)
        if "inference-header-content-length" in headers:
            raise V2Error(400, BINARY_HINT)
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding != "identity":
            raise V2Error(400, f"Content-Encoding {encoding!r} is not supported: send plain JSON")
        if raw is None:
            raise V2Error(400, f"body larger than {max_body_bytes} bytes")
        row = numeric_row(raw, limits)  # the commonest body, from its bytes
        if row is not None:
            request_id, rows, requested = None, [row], None
        else:
            request_id, rows, requested = parse_infer_body(raw, limits)
        job = None
        if isinstance(target, ServedModel):
            try:
                if row is not None:  # no null in it; answered as JSON from pieces, below
                    prediction, proba = target.predict(row, complete=True)
                else:
                    outputs = infer_outputs(target, rows, requested)
            except MODEL_INPUT_ERRORS as exc:
                raise V2Error(
                    400, f"the model cannot use these features: {type(exc).__name__}: {exc}"
                ) from None
            if row is not None:
                proba = proba if target.kind == "classifier" else None
                return one_row_answer(head_of(name, target), prediction, proba), None
            served_version = target.version
            state = _parameters(target)
        else:
            assert graphs is not None
            # the request's id keys sticky splits and shadow sampling, for every row
            status, content, job = graphs.answer_rows(name, rows, request_id)
            if status != 200:
                message = v1_problems(content.get("detail"))
                raise V2Error(400 if status in (413, 422) else status, message)
            if row is not None:  # the commonest: one row, every output, no id
                (one,) = content["predictions"]
                head = graph_head(name, content["graph_version"])
                tail = graph_row_tail(one)
                return one_row_answer(head, one["prediction"], one["probabilities"], tail), job
            outputs = graph_outputs(content, requested)
            served_version = content["graph_version"]
            state = None
        answer = _answer_fields(name, served_version, request_id, state)
        answer["outputs"] = outputs
        return answer, job

    def answer_linear(
        name: str, version: str | None, raw: bytes, headers: Mapping[str, str]
    ) -> bytes | None:
        """The JSON of `answer`'s 200 to the commonest body (one row, every output, no id)
        sent to a compiled linear model, its sum read from the bytes in C (`row_sum`: the same
        numbers, no row built); None for anything else, which `answer` then reads."""
        served = follower.get(name)
        if (
            served is None
            or (parts := served.linear_parts) is None
            or (version is not None and version != str(served.version))
            or "inference-header-content-length" in headers
            or "content-encoding" in headers
        ):
            return None
        acc = row_sum(raw, parts.params, limits)
        if acc is None or (outcome := served.predict_sum(acc)) is None:
            return None
        prediction, proba = outcome
        if proba is None:  # a regressor's
            return one_row_answer(head_of(name, served), prediction, None)
        return binary_answer(head_of(name, served), prediction, proba)  # {False: q, True: p}

    def respond(
        name: str,
        version: str | None,
        raw: bytes | None,
        headers: Mapping[str, str],
        started: float | None = None,
    ) -> tuple[int, bytes, Any]:
        """Status, JSON body and shadow job of an infer request: the documented routes and the
        fast path (`V2InferFastPath`) both answer through it. ``started``: when the request
        came, if the caller knows (its duration is observed from then)."""
        if started is None:
            started = time.perf_counter()
        job = None
        if raw is not None and (linear := answer_linear(name, version, raw, headers)) is not None:
            status, body = 200, linear
        else:
            try:
                content, job = answer(name, version, raw, headers)
                status = 200
                if content.__class__ is bytes:
                    body = content
                else:
                    body = orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)
            except V2Error as exc:
                status, job = exc.status, None
                body = orjson.dumps({"error": exc.message}, option=orjson.OPT_NON_STR_KEYS)
        if observe is not None:
            found = (  # an answer found its model or graph
                status == 200
                or follower.is_known(name)
                or (graphs is not None and graphs.follower.get(name) is not None)
            )
            label = name if found else "none"
            observe(INFER_ROUTE, label, status, time.perf_counter() - started)
        return status, body, job

    async def infer(name: str, version: str | None, request: Request) -> Response:
        raw = await request_body(request, max_body_bytes)
        status, body, job = respond(name, version, raw, request.headers)
        response = Response(body, status_code=status, media_type="application/json")
        if job is not None and graphs is not None:  # shadows, once the response is sent
            response.background = BackgroundTask(graphs.run_later, job)
        return response

    if fast_paths is not None:
        run_later = graphs.run_later if graphs is not None else None
        fast_paths.append(
            lambda app: V2InferFastPath(
                app, respond=respond, max_body_bytes=max_body_bytes, run_later=run_later
            )
        )

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

    # The path parameters come from the request (documented by openapi_extra): FastAPI would
    # otherwise document a 422 these routes never answer.
    @router.post(
        "/models/{name}/infer", summary="Infer with the served version",
        openapi_extra=openapi.v2_infer_body(versioned=False),
        responses=openapi.V2_INFER_RESPONSES, response_model=None,
    )  # fmt: skip
    async def model_infer(request: Request) -> Response:
        return await infer(request.path_params["name"], None, request)

    @router.post(
        "/models/{name}/versions/{version}/infer", summary="Infer with a version",
        openapi_extra=openapi.v2_infer_body(versioned=True),
        responses=openapi.V2_INFER_RESPONSES, response_model=None,
    )  # fmt: skip
    async def version_infer(request: Request) -> Response:
        params = request.path_params
        return await infer(params["name"], params["version"], request)

    return router


def _parameters(served: ServedModel) -> dict[str, Any]:
    """An answer's ``parameters``: with ``model_version`` they name the state answering."""
    return {"samples_learned": served.samples_learned, "live": served.live}


def _answer_fields(
    name: str, version: int | str, request_id: str | None, parameters: dict[str, Any] | None
) -> dict[str, Any]:
    """An infer answer's fields before its ``outputs``, in their order (the general answers and
    the rendered head of the commonest, `answer_head`, both start with them)."""
    fields: dict[str, Any] = {"model_name": name, "model_version": str(version)}
    if request_id is not None:
        fields["id"] = request_id
    if parameters is not None:
        fields["parameters"] = parameters
    return fields
