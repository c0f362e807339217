"""The API: an app factory whose routes only read the models the follower has loaded.

``create_app(settings)`` builds the snapshot store (lazily: no connection is opened until the
app starts), a `SnapshotFollower` started and stopped by the app's lifespan, and the routes:

- ``POST /v1/models/{name}/predict``: ``{"features": {...}}`` → ``{"model", "version",
  "samples_learned", "prediction", "probabilities"}``; ``{"instances": [...]}`` → ``{"model",
  "version", "samples_learned", "predictions": [{"prediction", "probabilities"}, ...]}``.
  ``version`` and ``samples_learned`` name the state that answered: a version, or a live update
  continuing it (`stream.store.live`). Probabilities are given for classifiers (JSON object
  keys, so ``true``/``false`` for boolean labels); for anomaly models the prediction is the
  anomaly score.
- ``GET /v1/models``, ``GET /v1/models/{name}``: version served, age, samples, metrics, size.
- ``POST /v1/graphs/{name}/predict``, ``GET /v1/graphs``, ``GET /v1/graphs/{name}``: serving
  graphs, several models answering together, followed live like models (`serving.graphs`).
- ``GET /v1/models/{name}/predictions/{id}``, ``GET /v1/graphs/{name}/predictions/{id}``:
  answers computed ahead by ``riverstream score --into redis`` (`serving.lookup`).
- ``GET /v1/models/{name}/curve``: the learning curve the learner traced (`serving.curve`).
- ``GET /healthz`` (the process answers), ``GET /readyz`` (503 until every expected model is
  loaded; reports Redis reachability and staleness), ``GET /metrics`` (Prometheus).
- ``/v2/...``: the Open Inference Protocol v2 over the same models (`serving.v2`).

Bad input never gets a 5xx: 404 for an unknown model, 413 for an oversized body, 422 with
``{"detail": [{"loc", "msg", "type"}]}`` for anything else, including features that the model
itself cannot use (a string where it needs a number).

An API that starts while Redis is away serves once Redis is back; one whose credentials Redis
refuses does not start (`stream.store.snapshots.RedisAuthError`, naming the settings: uvicorn
exits non-zero). Credentials refused later (a password changed under a running API) are ridden
out like an outage, the models loaded serving on, and reported as what they are (``/readyz``:
``redis.reason`` ``auth``, `stream.store.following`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, Final

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse as _StarletteJSONResponse
from fastapi.responses import Response
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from starlette.types import ASGIApp, Receive, Scope, Send

from learners.predictor import MODEL_INPUT_ERRORS, ServedModel
from schemas.errors import ConfigError
from schemas.settings import Settings
from serving import openapi
from serving.asgi import (
    JSON_OPTIONS,
    DirectAnswer,
    FastPath,
    json_default,
    receive_body,
    render,
    replay_whole,
    request_body,
    send_json,
)
from serving.curve import curve_router
from serving.feedback import ClosedLoop, Publisher
from serving.graphs import GRAPHS_PREFIX, GraphFastPath, GraphService, wait_started
from serving.graphs import install as install_graphs
from serving.inputs import (
    InputError,
    InputLimits,
    linear_sum,
    load_body,
    numeric_features,
    numeric_instances,
    predict_features,
    read_features,
)
from serving.lookup import lookup_router
from serving.telemetry import RequestRecorder, ServingMetrics, get_metrics, metrics_response_bytes
from serving.v2 import v2_router
from serving.v2_fast import V2_MODELS_PREFIX, V2InferFastPath
from stream.store.connect import redis_client, redis_configured
from stream.store.follower import SnapshotFollower
from stream.store.following import stop_if_refused
from stream.store.snapshots import SnapshotStore

PREDICT_ROUTE = "/v1/models/{name}/predict"
_PREDICT_PREFIX, _PREDICT_SUFFIX = "/v1/models/", "/predict"
_NAME_START, _NAME_END = len(_PREDICT_PREFIX), -len(_PREDICT_SUFFIX)
UNREAD: Final = object()
"""`answer`'s ``body`` when the caller has not loaded the JSON."""
Answer = Callable[[str, bytes | None, Any, float | None], tuple[int, dict[str, Any]]]
AnswerRead = Callable[[str, bytes, float], dict[str, Any] | None]


class JSONResponse(_StarletteJSONResponse):
    """JSON rendered by orjson (non-string keys such as boolean labels become strings)."""

    def render(self, content: Any) -> bytes:
        return render(content)


def default_store(settings: Settings) -> SnapshotStore:
    """The Redis snapshot store described by ``settings`` (no connection opened yet)."""
    if not redis_configured(settings):
        raise ConfigError("RIVERSTREAM_REDIS_URL is not set: the API needs the snapshot Redis")
    # The API only reads: from RIVERSTREAM_REDIS_READ_URL when set (`stream.store.connect`).
    client = redis_client(
        settings, read=True, socket_connect_timeout=2.0, socket_timeout=10.0,
        health_check_interval=30, retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), 2),
    )  # fmt: skip
    return SnapshotStore(
        client, settings.redis_prefix, settings.require_snapshot_key(),
        settings.snapshot_chunk_bytes,
    )  # fmt: skip


def create_app(
    settings: Settings,
    *,
    store_factory: Callable[[Settings], SnapshotStore] = default_store,
    metrics: ServingMetrics | None = None,
    max_instances: int | None = None,
    max_body_bytes: int | None = None,
    fast_path: bool = True,
) -> RiverstreamAPI:
    metrics = get_metrics() if metrics is None else metrics
    store = store_factory(settings)
    models = tuple(m.strip() for m in settings.serve_models.split(",") if m.strip())
    follower = SnapshotFollower(
        store, metrics, models=models, poll_seconds=settings.serve_poll_seconds, live=True
    )
    max_instances = settings.serve_max_instances if max_instances is None else max_instances
    max_body_bytes = settings.serve_max_body_bytes if max_body_bytes is None else max_body_bytes
    limits = InputLimits(max_features=settings.max_features, max_instances=max_instances)
    recorder = RequestRecorder(metrics)  # per-request metrics, written in bulk every second
    observe = recorder.observe
    registry = None if metrics is get_metrics() else metrics.registry
    graphs = GraphService(
        settings, store, follower, metrics, limits=limits, max_body_bytes=max_body_bytes,
        observe=observe,
    )  # fmt: skip

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        follower.start()
        graphs.start()
        # Serve once this worker has looked at Redis: a request must not hear "unknown model"
        # from a worker that has not loaded what its sibling already serves.
        await asyncio.to_thread(follower.first_sync.wait, settings.serve_start_wait_seconds)
        # Redis refusing the credentials is a configuration error, not an outage: no start.
        stop_if_refused(follower, stop=graphs.stop)
        await wait_started(graphs)  # the same for graphs
        # What exists now (the imports, the models loaded) lives as long as the process: out of
        # the collector's reach, its full passes no longer walk it (≈ 130k objects).
        gc.freeze()
        try:
            async with recorder.flushing():
                yield
        finally:
            graphs.stop()
            follower.stop()
            app.state.publisher.close()

    app = RiverstreamAPI(
        title="riverstream",
        summary="Predictions from River models that keep learning.",
        version="1",
        lifespan=lifespan,
        default_response_class=JSONResponse,
    )
    app.state.follower = follower
    app.state.store = store
    install_graphs(app, graphs, fast_path=fast_path)  # /v1/graphs (serving.graphs)
    v2_fast: list[Callable[[ASGIApp], V2InferFastPath]] = []
    app.include_router(
        v2_router(
            follower,
            limits=limits,
            max_body_bytes=max_body_bytes,
            observe=observe,
            graphs=graphs,
            fast_paths=v2_fast,
        )
    )  # Open Inference Protocol v2, models and graphs (fast_paths: its infer route in raw ASGI)

    @app.post(
        PREDICT_ROUTE, summary="Predict with the served version of a model",
        openapi_extra=openapi.PREDICT_BODY, responses=openapi.PREDICT_RESPONSES,
        response_model=None,
    )  # fmt: skip
    async def predict(request: Request) -> Response:
        # Documents the route; requests are answered by the `PredictFastPath` middleware below,
        # which runs the same `answer` without Starlette's routing and request objects.
        raw = await request_body(request, max_body_bytes)
        status, content = answer(request.path_params["name"], raw)
        return JSONResponse(content, status)

    def answer(
        name: str, raw: bytes | None, body: Any = UNREAD, started: float | None = None
    ) -> tuple[int, dict[str, Any]]:
        """Status and body of a predict request for model ``name`` (``raw`` None: too large;
        ``body``: ``raw`` already loaded by the caller, from ``started``)."""
        if started is None:
            started = time.perf_counter()
        served = follower.get(name)
        if served is None:
            known = follower.is_known(name)
            status, label = (503, name) if known else (404, "none")
            what = "is not loaded yet" if known else "is unknown"
            observe(PREDICT_ROUTE, label, status, time.perf_counter() - started)
            return status, {"detail": f"model {name!r} {what}"}
        status = 200
        content: dict[str, Any]
        try:
            if raw is None:
                status, content = 413, {"detail": f"body larger than {max_body_bytes} bytes"}
            else:
                if body is UNREAD:
                    body = load_body(raw)
                features = numeric_features(body, limits)  # the commonest body, checked in C
                if features is not None:
                    content = _answer(name, served, *served.predict(features, complete=True))
                elif (instances := numeric_instances(body, limits)) is not None:
                    content = _answers(name, served, instances, complete=True)
                else:
                    content = _answers(name, served, predict_features(body, limits))
        except InputError as exc:
            status, content = 422, {"detail": exc.detail}
        except MODEL_INPUT_ERRORS as exc:
            detail = [{"loc": ["body"], "msg": f"the model cannot use these features: "
                       f"{type(exc).__name__}: {exc}", "type": "model_input"}]  # fmt: skip
            status, content = 422, {"detail": detail}
        observe(PREDICT_ROUTE, name, status, time.perf_counter() - started)
        return status, content

    def answer_read(name: str, raw: bytes, started: float) -> dict[str, Any] | None:
        """`answer`'s 200 for the commonest body, read from its bytes in C: to a compiled
        linear model, its sum (`serving.inputs.linear_sum`: the same numbers, no features
        built); to any other, its features (`serving.inputs.read_features`: the general
        reading's). None for anything else, or a prediction that fails, which `answer` then
        reads (and explains)."""
        served = follower.get(name)
        if served is None:
            return None
        parts = served.linear_parts
        if parts is not None:
            acc = linear_sum(raw, parts.params, limits)
            if acc is None or (outcome := served.predict_sum(acc)) is None:
                return None
        else:
            features = read_features(raw, limits)
            if features is None:
                return None
            try:
                outcome = served.predict(features, complete=True)
            except MODEL_INPUT_ERRORS:
                return None
        content = _answer(name, served, *outcome)
        observe(PREDICT_ROUTE, name, 200, time.perf_counter() - started)
        return content

    if fast_path:
        app.add_middleware(
            PredictFastPath, answer=answer, answer_read=answer_read,
            max_body_bytes=max_body_bytes,
        )  # fmt: skip
        # The hot routes also go first, before the whole middleware stack, unless every predict
        # route needs a token (`serving.feedback.ClosedLoop` checks it, in the stack).
        if getattr(settings, "predict_token", None) is None:
            model_fast = PredictFastPath(
                app.stack, answer=answer, answer_read=answer_read,
                max_body_bytes=max_body_bytes, with_ids=app.stack,
            )  # fmt: skip
            fast: list[tuple[str, FastPath]] = [(_PREDICT_PREFIX, model_fast)]
            fast += [(V2_MODELS_PREFIX, wrap(app.stack)) for wrap in v2_fast]
            fast.append((GRAPHS_PREFIX, GraphFastPath(app.stack, service=graphs)))
            app.fast_paths = tuple(fast)
            app.direct_answers = settings.serve_direct_answers
            app.max_body_bytes = max_body_bytes
    # Outermost: tokens, POST /v1/features and /v1/labels, predict with an id (logged to Kafka).
    publisher = Publisher(settings)
    app.state.publisher = publisher  # closed with the app (its lifespan)
    app.add_middleware(
        ClosedLoop, settings=settings, max_body_bytes=max_body_bytes, publisher=publisher,
        metrics=metrics,
    )  # fmt: skip

    @app.get("/v1/models", summary="Every served model", response_model=openapi.ModelList)
    async def list_models() -> Response:
        now = time.time()
        served = follower.served
        return JSONResponse({"models": [served[n].info(now) for n in sorted(served)]})

    @app.get(
        "/v1/models/{name}", summary="The served version of a model",
        response_model=openapi.ModelInfo, responses={404: {"model": openapi.Message}},
    )  # fmt: skip
    async def model_info(name: str) -> Response:
        served = follower.get(name)
        if served is None:
            return JSONResponse({"detail": f"model {name!r} is not served"}, 404)
        return JSONResponse(served.info())

    @app.get("/healthz", summary="The process is alive")
    async def healthz() -> Response:
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", summary="Every expected model is loaded and verified")
    async def readyz() -> Response:
        status = follower.status()
        return JSONResponse(status, 200 if status["ready"] else 503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus() -> Response:
        recorder.flush()  # this process's requests so far
        body, content_type = metrics_response_bytes(registry)
        return Response(body, media_type=content_type)

    app.include_router(lookup_router(store))  # batch predictions, by id
    app.include_router(curve_router(store))  # learning curves
    return app


def _answers(
    name: str,
    served: ServedModel,
    parsed: dict[str, Any] | list[dict[str, Any]],
    complete: bool = False,
) -> dict[str, Any]:
    """The answer of ``served`` to checked features: one instance, or a batch (a tight loop;
    ``complete``: no instance has a missing feature)."""
    if isinstance(parsed, dict):
        return _answer(name, served, *served.predict(parsed))
    predict = served.predict
    predictions: list[dict[str, Any]] = []
    append = predictions.append
    for x in parsed:
        prediction, proba = predict(x, complete=complete)
        append({"prediction": prediction, "probabilities": proba})
    return {
        "model": name, "version": served.version, "samples_learned": served.samples_learned,
        "predictions": predictions,
    }  # fmt: skip


def _answer(name: str, served: ServedModel, prediction: Any, proba: Any) -> dict[str, Any]:
    """The answer to one instance: the state that answered (version and samples learned)."""
    return {
        "model": name, "version": served.version, "samples_learned": served.samples_learned,
        "prediction": prediction, "probabilities": proba,
    }  # fmt: skip


class RiverstreamAPI(FastAPI):
    """FastAPI whose hot routes may be answered before its middleware stack.

    Starlette wraps every request in its middleware stack (error handling, FastAPI's body limit
    and telemetry hooks, which read the environment on every request, then ours): ≈ 30 µs of
    CPU per request here (measured in process), three times what a prediction costs.
    ``fast_paths`` (`create_app` sets them: `PredictFastPath`, `serving.v2_fast`'s and
    `serving.graphs.GraphFastPath`) are ``(path prefix, ASGI app)``: an HTTP request whose
    path starts with a prefix goes to the first such app, which answers its hot route and
    passes anything else to `stack`, the app as FastAPI runs it; the other requests go to the
    stack directly. Lifespan events always go to the stack. Each fast path is one layer under
    this one (a layer costs ≈ 0.4 µs a request).
    """

    fast_paths: tuple[tuple[str, FastPath], ...] = ()
    direct_answers = False
    """Whether `serving.protocol` may answer the fast paths' routes without the ASGI cycle
    (`direct`; ``RIVERSTREAM_SERVE_DIRECT_ANSWERS``)."""
    max_body_bytes = 0
    """The fast paths' size limit (``RIVERSTREAM_SERVE_MAX_BODY_BYTES``), for `direct`."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            for prefix, fast in self.fast_paths:
                if path.startswith(prefix):
                    await fast(scope, receive, send)
                    return
        await super().__call__(scope, receive, send)

    def direct(
        self, path: str, headers: Iterable[tuple[bytes, bytes]], body: bytes, started: float
    ) -> DirectAnswer | None:
        """`DirectPath.direct` of the fast path whose prefix ``path`` starts with: what `__call__`
        would answer to ``POST path``, or None (the request goes to `__call__`). A body over
        `max_body_bytes` is given as None, as `receive_body` gives it to their `__call__`."""
        for prefix, fast in self.fast_paths:
            if path.startswith(prefix):
                raw = body if len(body) <= self.max_body_bytes else None
                return fast.direct(path, headers, raw, started)
        return None

    async def stack(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app with its middleware stack (what FastAPI alone would run)."""
        await super().__call__(scope, receive, send)


class PredictFastPath:
    """Pure ASGI middleware answering ``POST /v1/models/{name}/predict`` directly.

    The hot route skips route matching, request objects and response classes; everything else
    goes to the app. The answer is the same function the documented route calls, so both behave
    identically. ``with_ids``: where a body naming an ``"id"`` goes instead (read, then replayed),
    since a prediction with an id is also logged (`serving.feedback.ClosedLoop`, in the stack).
    ``answer_read``: tried first, the commonest body read from its bytes (a body it answers
    holds no id); None leaves the body to the rest.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        answer: Answer,
        answer_read: AnswerRead | None = None,
        max_body_bytes: int,
        with_ids: ASGIApp | None = None,
    ) -> None:
        self.app = app
        self.answer = answer
        self.answer_read = answer_read
        self.max_body_bytes = max_body_bytes
        self.with_ids = with_ids

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            name = _predict_name(scope["path"])
            if name is not None:
                started = time.perf_counter()
                raw = await receive_body(receive, self.max_body_bytes)
                answered = self.respond(name, raw, started)
                if answered is None:  # it names an id: the stack's
                    assert raw is not None and self.with_ids is not None  # (`respond`)
                    await self.with_ids(scope, replay_whole(raw, receive), send)
                    return
                await send_json(send, *answered)
                return
        await self.app(scope, receive, send)

    def respond(self, name: str, raw: bytes | None, started: float) -> tuple[int, bytes] | None:
        """Status and JSON of the answer to ``raw`` (None: over the size limit), or None for a
        body naming an ``"id"`` when such bodies go to `with_ids`."""
        if raw is None:
            body: Any = UNREAD
        else:
            if self.answer_read is not None:
                content = self.answer_read(name, raw, started)
                if content is not None:  # `render`, inline: a call less on the hot path
                    return 200, orjson.dumps(content, default=json_default, option=JSON_OPTIONS)
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                body = UNREAD  # `answer` loads it again and names the problem
            if self.with_ids is not None and body.__class__ is dict and "id" in body:
                return None
        status, content = self.answer(name, raw, body, started)
        return status, orjson.dumps(content, default=json_default, option=JSON_OPTIONS)

    def direct(
        self, path: str, headers: Iterable[tuple[bytes, bytes]], raw: bytes | None, started: float
    ) -> DirectAnswer | None:
        """`DirectPath.direct`: ``POST /v1/models/{name}/predict`` answered as `__call__` does."""
        name = _predict_name(path)
        if name is None:
            return None
        answered = self.respond(name, raw, started)
        return None if answered is None else (*answered, None)


def _predict_name(path: str) -> str | None:
    """The model named by a path ``/v1/models/{name}/predict``, else None."""
    if path.startswith(_PREDICT_PREFIX) and path.endswith(_PREDICT_SUFFIX):
        name = path[_NAME_START:_NAME_END]
        if name and "/" not in name:
            return name
    return None
