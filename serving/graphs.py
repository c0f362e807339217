"""Serving graphs over HTTP: several live models answering one request as a graph says.

`GraphService` holds the process's `stream.store.graph_follower.GraphFollower` (graph versions
followed live, like models) and evaluates a graph with `learners.graph` against the models the
`SnapshotFollower` serves at that moment; `graphs_router` and `GraphFastPath` expose it:

- ``POST /v1/graphs/{name}/predict``: ``{"features": {...}, "id": "..."}`` →
  ``{"graph", "graph_version", "versions", "samples_learned", "prediction", "probabilities",
  "kind", "path", "decided_by", "decision", "reason"}``; ``{"instances": [...], "ids": [...]}`` →
  ``{"graph", "graph_version", "predictions": [{"versions", "prediction", ...}, ...]}``. The
  bodies are those of ``/v1/models/{name}/predict`` plus the optional request id (a string or
  an integer) that keys sticky splits and shadow sampling. ``versions`` names every model used
  and its version (with ``samples_learned``, the exact state: a member may be served by a live
  update continuing that version), ``path`` the choices made (switch cases, split branches,
  the rule that matched), ``decided_by`` the node or rule whose answer this is. A batch is
  evaluated against one view of the served models: every instance sees the same versions.
- ``GET /v1/graphs``: the graphs served, with version and models; ``GET /v1/graphs/{name}``: one
  of them, with its document and the version of each member this process serves.

Statuses: 404 for a graph this process does not serve; 413 for a body over the limit; 422
(``{"detail": [{"loc", "msg", "type"}]}``) for an invalid body, features a member model cannot
use, or a split that needs an id it was not given; 503 (``{"detail": "..."}``) when a member is
not loaded (never loaded here, or removed: the detail names the model and the node), or when the
graph cannot combine what its members answer (a classifier and a regressor in one ensemble).
Never a 500 for any of these.

Shadows
-------
A ``shadow`` node's primary answers; its shadows are evaluated after the response has been sent,
on one background thread (`ShadowRunner`), against the same model versions as the primary, so
the response is the same bytes whether a shadow ran, failed or was sampled out. Their results are
Prometheus metrics (labels ``graph``, ``shadow`` = the shadow node's path, bounded by the graph
documents): ``riverstream_shadow_runs_total``, ``riverstream_shadow_errors_total`` (with a
``reason``: ``member_unavailable``, ``model_input``, ``graph``, ``error``),
``riverstream_shadow_agreements_total`` (the shadow's prediction equals the primary's: divide by
the runs for the agreement rate; for regressors it counts exact equality only) and
``riverstream_shadow_duration_seconds``. When the backlog exceeds `SHADOW_BACKLOG` requests,
further shadows are dropped and counted (``riverstream_shadow_dropped_total``) rather than let
memory grow.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask

from learners.graph import GraphAnswer, GraphInputError, MemberUnavailable, run_shadows
from learners.predictor import MODEL_INPUT_ERRORS
from schemas.graph_errors import GraphError
from serving.asgi import receive_body, request_body
from serving.inputs import InputError, InputLimits, check_features
from stream.store.graph_follower import GraphFollower, ServedGraph, ServedModels
from stream.store.graphs import GraphStore

if TYPE_CHECKING:
    from schemas.settings import Settings
    from serving.telemetry import ServingMetrics
    from stream.store.follower import SnapshotFollower
    from stream.store.snapshots import SnapshotStore

log = logging.getLogger(__name__)

GRAPH_PREDICT_ROUTE = "/v1/graphs/{name}/predict"
_PREFIX, _SUFFIX = "/v1/graphs/", "/predict"
_JSON_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY
_MAX_ERRORS = 20
SHADOW_BACKLOG = 1000
"""Most requests whose shadows wait to run; beyond, shadows are dropped (and counted)."""
SHADOW_BUCKETS = (1e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


# -- metrics ---------------------------------------------------------------------------------
class GraphMetrics:
    """The graphs' and shadows' metrics, registered once per Prometheus registry."""

    _by_registry: ClassVar[dict[int, tuple[CollectorRegistry, GraphMetrics]]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.graph_version = Gauge(
            "riverstream_graph_version", "Graph version served (min over live workers).",
            ["graph"], multiprocess_mode="livemin", registry=r,
        )  # fmt: skip
        self.graph_swaps = Counter(
            "riverstream_graph_swaps", "Graph versions swapped in.", ["graph"], registry=r
        )
        self.graphs_refused = Counter(
            "riverstream_graphs_refused", "Graph versions refused (invalid documents).",
            ["graph", "reason"], registry=r,
        )  # fmt: skip
        self.shadow_runs = Counter(
            "riverstream_shadow_runs", "Shadow evaluations run.", ["graph", "shadow"], registry=r
        )
        self.shadow_errors = Counter(
            "riverstream_shadow_errors", "Shadow evaluations that raised (the request was fine).",
            ["graph", "shadow", "reason"], registry=r,
        )  # fmt: skip
        self.shadow_agreements = Counter(
            "riverstream_shadow_agreements",
            "Shadow evaluations whose prediction equals the primary answer's.",
            ["graph", "shadow"], registry=r,
        )  # fmt: skip
        self.shadow_dropped = Counter(
            "riverstream_shadow_dropped", "Shadowed requests dropped: backlog full.", ["graph"],
            registry=r,
        )  # fmt: skip
        self.shadow_duration_seconds = Histogram(
            "riverstream_shadow_duration_seconds", "Time to evaluate one shadow.",
            ["graph", "shadow"], buckets=SHADOW_BUCKETS, registry=r,
        )  # fmt: skip

    @classmethod
    def for_registry(cls, registry: CollectorRegistry) -> GraphMetrics:
        """The metrics on ``registry``, created on first use (a registry refuses a second
        registration of the same names)."""
        with cls._lock:
            hit = cls._by_registry.get(id(registry))
            if hit is None or hit[0] is not registry:
                hit = (registry, cls(registry))
                cls._by_registry[id(registry)] = hit
            return hit[1]

    # GraphFollowerMetrics
    def graph_swapped(self, graph: str, version: int) -> None:
        self.graph_version.labels(graph=graph).set(version)
        self.graph_swaps.labels(graph=graph).inc()

    def graph_refused(self, graph: str, reason: str) -> None:
        self.graphs_refused.labels(graph=graph, reason=reason).inc()


# -- request bodies --------------------------------------------------------------------------
def _problem(loc: list[Any], msg: str, kind: str) -> dict[str, Any]:
    return {"loc": ["body", *loc], "msg": msg, "type": kind}


def _type(value: Any) -> str:
    if isinstance(value, dict):
        return "object"
    return "array" if isinstance(value, list) else type(value).__name__


def _request_id(value: Any, loc: list[Any], max_length: int) -> str | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not 0 < len(value) <= max_length:
        shown = f"{len(value)} characters" if isinstance(value, str) else _type(value)
        msg = f"an id is a string of 1 to {max_length} characters or an integer, not {shown}"
        raise InputError([_problem(loc, msg, "request_id")])
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
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InputError([_problem([], f"invalid JSON: {exc}", "json_invalid")]) from None
    if not isinstance(body, dict):
        raise InputError([_problem([], f"expected an object, got {_type(body)}", "dict_type")])
    extra = [k for k in body if k not in ("features", "instances", "id", "ids")]
    if extra:
        msg = "unknown field: use 'features' (and 'id') or 'instances' (and 'ids')"
        raise InputError([_problem([k], msg, "extra_forbidden") for k in extra[:_MAX_ERRORS]])
    single, batch = "features" in body, "instances" in body
    if single == batch or (single and "ids" in body) or (batch and "id" in body):
        msg = (
            "give either 'features' (and 'id') or 'instances' (and 'ids')"
            if single or batch
            else "field required ('features' or 'instances')"
        )
        raise InputError([_problem([] if single or batch else ["features"], msg, "value_error")])
    if single:
        features = check_features(body["features"], ["features"], limits)
        return features, _request_id(body.get("id"), ["id"], max_id_length)
    instances = body["instances"]
    if not isinstance(instances, list):
        msg = f"expected an array of feature objects, got {_type(instances)}"
        raise InputError([_problem(["instances"], msg, "list_type")])
    if len(instances) > limits.max_instances:
        msg = f"{len(instances)} instances, the limit is {limits.max_instances}"
        raise InputError([_problem(["instances"], msg, "too_long")])
    problems: list[dict[str, Any]] = []
    for i, x in enumerate(instances):
        try:
            check_features(x, ["instances", i], limits)
        except InputError as exc:
            problems += exc.detail
            if len(problems) >= _MAX_ERRORS:
                break
    if problems:
        raise InputError(problems[:_MAX_ERRORS])
    raw_ids = body.get("ids")
    if raw_ids is None:
        no_ids: list[str | None] = [None] * len(instances)
        return instances, no_ids
    if not isinstance(raw_ids, list) or len(raw_ids) != len(instances):
        got = f"{len(raw_ids)} ids" if isinstance(raw_ids, list) else _type(raw_ids)
        msg = f"expected an array of one id (or null) per instance, got {got}"
        raise InputError([_problem(["ids"], msg, "ids")])
    ids = [_request_id(v, ["ids", i], max_id_length) for i, v in enumerate(raw_ids)]
    return instances, ids


# -- shadows ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ShadowJob:
    """The shadows of one request, to run after its response: each answer lists its pending
    shadows (`learners.graph.GraphAnswer.shadows`) and is paired with its features."""

    graph: str
    answers: tuple[tuple[GraphAnswer, dict[str, Any]], ...]
    models: ServedModels


def _shadow_reason(error: Exception) -> str:
    if isinstance(error, MemberUnavailable):
        return "member_unavailable"
    if isinstance(error, GraphError):
        return "graph"
    if isinstance(error, (*MODEL_INPUT_ERRORS, GraphInputError)):
        return "model_input"
    return "error"


class ShadowRunner:
    """Runs shadow jobs on one background thread; never raises into its caller."""

    def __init__(self, metrics: GraphMetrics, backlog: int = SHADOW_BACKLOG) -> None:
        self.metrics = metrics
        self.backlog = backlog
        self._slots = threading.BoundedSemaphore(backlog)
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def submit(self, job: ShadowJob) -> bool:
        """Queue ``job``; False (and counted) when the backlog is full."""
        if not self._slots.acquire(blocking=False):
            self.metrics.shadow_dropped.labels(graph=job.graph).inc()
            return False
        try:
            with self._lock:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(1, thread_name_prefix="graph-shadows")
                self._executor.submit(self._run, job)
        except RuntimeError:  # shutting down
            self._slots.release()
            return False
        return True

    def _run(self, job: ShadowJob) -> None:
        try:
            m = self.metrics
            for answer, x in job.answers:
                for result in run_shadows(answer, x, job.models):
                    labels = {"graph": job.graph, "shadow": result.path}
                    m.shadow_runs.labels(**labels).inc()
                    m.shadow_duration_seconds.labels(**labels).observe(result.seconds)
                    if result.error is not None:
                        reason = _shadow_reason(result.error)
                        m.shadow_errors.labels(**labels, reason=reason).inc()
                    elif result.agrees:
                        m.shadow_agreements.labels(**labels).inc()
        except Exception:  # pragma: no cover - run_shadows captures what shadows raise
            log.exception("shadow job of graph %s failed", job.graph)
        finally:
            self._slots.release()

    def wait_idle(self, timeout: float) -> bool:
        """Whether every queued job has run within ``timeout`` seconds (for tests, shutdown)."""
        with self._lock:
            executor = self._executor
        if executor is None:
            return True
        done = threading.Event()
        try:
            executor.submit(done.set)  # one thread: it runs after everything queued before
        except RuntimeError:
            return True
        return done.wait(timeout)

    def stop(self) -> None:
        """Finish the running job, drop the queued ones (a restarted app starts afresh)."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
            self._slots = threading.BoundedSemaphore(self.backlog)  # cancelled jobs held slots


# -- the service -----------------------------------------------------------------------------
Observe = Callable[[str, str, int, float], None]


class GraphService:
    """Graph evaluation for one API process: the graph follower, the model lookup, shadows."""

    def __init__(
        self,
        settings: Settings,
        store: SnapshotStore,
        models: SnapshotFollower,
        metrics: ServingMetrics,
        *,
        limits: InputLimits,
        max_body_bytes: int,
        observe: Observe | None = None,
    ) -> None:
        self.metrics = GraphMetrics.for_registry(metrics.registry)
        self.follower = GraphFollower(
            GraphStore(store.client, store.keys.prefix),
            self.metrics,
            poll_seconds=settings.serve_poll_seconds,
        )
        self.models = models
        self.metric = settings.serve_graph_metric or None
        self.limits = limits
        self.max_body_bytes = max_body_bytes
        self.max_id_length = settings.max_id_length
        self.start_wait_seconds = settings.serve_start_wait_seconds
        self.observe: Observe = observe if observe is not None else metrics.observe_request
        self.shadows = ShadowRunner(self.metrics)
        self._weights: dict[tuple[str, int], float | None] = {}  # by_metric, per model version

    def start(self) -> None:
        self.follower.start()

    def stop(self) -> None:
        self.follower.stop()
        self.shadows.stop()

    def lookup(self) -> ServedModels:
        """The models as served now, for one request (or one batch)."""
        return ServedModels(self.models.served, self.metric, self._weights)

    def evaluate(
        self, name: str, x: dict[str, Any], request_id: str | None = None
    ) -> tuple[ServedGraph, GraphAnswer, ServedModels] | None:
        """Graph ``name``'s answer to ``x`` (None: not served), for other protocols. Raises as
        `learners.graph.evaluate` does; the caller runs ``answer.shadows`` (`run_later`)."""
        graph = self.follower.get(name)
        if graph is None:
            return None
        models = self.lookup()
        return graph, graph.compiled.evaluate(x, models=models, request_id=request_id), models

    def run_later(self, job: ShadowJob | None) -> None:
        """Queue the shadows of a request whose response is on its way."""
        if job is not None:
            self.shadows.submit(job)

    def answer(self, name: str, raw: bytes | None) -> tuple[int, dict[str, Any], ShadowJob | None]:
        """Status, body and shadows of a graph predict request (``raw`` None: too large)."""
        started = time.perf_counter()
        graph = self.follower.get(name)
        if graph is None:
            self.observe(GRAPH_PREDICT_ROUTE, "none", 404, time.perf_counter() - started)
            return 404, {"detail": f"graph {name!r} is unknown"}, None
        job = None
        try:
            if raw is None:
                raise _TooLarge
            parsed, ids = parse_graph_body(raw, self.limits, self.max_id_length)
            models = self.lookup()
            run = graph.compiled.evaluate
            if isinstance(parsed, dict):
                assert not isinstance(ids, list)
                answer = run(parsed, models=models, request_id=ids)
                content = {
                    "graph": name, "graph_version": graph.version, **_fields(answer, models),
                }  # fmt: skip
                if answer.shadows:
                    job = ShadowJob(name, ((answer, parsed),), models)
            else:
                assert isinstance(ids, list)
                answers = [
                    run(x, models=models, request_id=i) for x, i in zip(parsed, ids, strict=True)
                ]
                content = {
                    "graph": name, "graph_version": graph.version,
                    "predictions": [_fields(a, models) for a in answers],
                }  # fmt: skip
                shadowed = tuple((a, x) for a, x in zip(answers, parsed, strict=True) if a.shadows)
                if shadowed:
                    job = ShadowJob(name, shadowed, models)
            status = 200
        except _TooLarge:
            status, content = 413, {"detail": f"body larger than {self.max_body_bytes} bytes"}
        except InputError as exc:
            status, content = 422, {"detail": exc.detail}
        except GraphInputError as exc:
            status, content = 422, {"detail": [_problem([], str(exc), "graph_input")]}
        except MemberUnavailable as exc:
            status, content = 503, {"detail": f"graph {name!r}: {exc}"}
        except GraphError as exc:  # the members' answers do not fit the graph (kinds mixed)
            status, content = 503, {"detail": f"graph {name!r} cannot answer: {exc}"}
        except MODEL_INPUT_ERRORS as exc:
            msg = f"a model cannot use these features: {type(exc).__name__}: {exc}"
            status, content = 422, {"detail": [_problem([], msg, "model_input")]}
        self.observe(GRAPH_PREDICT_ROUTE, name, status, time.perf_counter() - started)
        return status, content, job


class _TooLarge(Exception):
    pass


def _fields(answer: GraphAnswer, models: ServedModels) -> dict[str, Any]:
    """The answer's fields; ``versions`` and ``samples_learned`` name the state of every member
    used (a member may be served by a live update continuing its version: `stream.store.live`)."""
    learned = {}
    for member in answer.versions:
        served = models.get(member)
        learned[member] = None if served is None else served.samples_learned
    return {
        "versions": answer.versions,
        "samples_learned": learned,
        "prediction": answer.prediction,
        "probabilities": answer.probabilities,
        "kind": answer.kind,
        "path": list(answer.path),
        "decided_by": answer.decided_by,
        "decision": answer.decision,
        "reason": answer.reason,
    }


def _fallback(obj: Any) -> Any:
    item = getattr(obj, "item", None)  # numpy scalars not covered by OPT_SERIALIZE_NUMPY
    return item() if callable(item) else str(obj)


def render(content: Any) -> bytes:
    """The JSON bytes of a response (orjson, as the models' routes: labels as object keys)."""
    return orjson.dumps(content, default=_fallback, option=_JSON_OPTIONS)


def _response(content: Any, status: int = 200) -> Response:
    return Response(render(content), status, media_type="application/json")


# -- HTTP ------------------------------------------------------------------------------------
class GraphPrediction(BaseModel):
    versions: dict[str, int] = Field(description="Every model used → its version.")
    prediction: Any = Field(examples=[True])
    probabilities: dict[str, float] | None = Field(None, examples=[{"false": 0.2, "true": 0.8}])
    kind: str = Field(examples=["classifier"])
    path: list[str] = Field(description="Choices made: switch cases, split branches, rules.")
    decided_by: str = Field(examples=["root.rules.rules[0]"])
    decision: str | None = Field(None, examples=["review"])
    reason: str | None = Field(None, examples=["large amount"])


class GraphPredictResponse(GraphPrediction):
    graph: str = Field(examples=["fraud"])
    graph_version: int = Field(examples=[57])


class GraphInfo(BaseModel):
    graph: str
    version: int
    description: str | None = None
    models: list[str]
    loaded_at: float
    document: dict[str, Any] | None = None
    members: dict[str, int | None] | None = Field(
        None, description="Each model named → the version this process serves (null: none)."
    )


_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"type": "object"},
                "examples": {
                    "single": {"value": {"features": {"amount": 120.5}, "id": "user-17"}},
                    "batch": {
                        "value": {
                            "instances": [{"amount": 120.5}, {"amount": 20000}],
                            "ids": ["user-17", "user-18"],
                        }
                    },
                },
            }
        },
    }
}


def graphs_router(service: GraphService) -> APIRouter:
    """The graph routes (the predict route is answered by `GraphFastPath` when installed)."""
    router = APIRouter()

    @router.post(
        GRAPH_PREDICT_ROUTE,
        summary="Predict with the served version of a graph",
        openapi_extra=_BODY,
        response_model=GraphPredictResponse,
        responses={404: {}, 413: {}, 422: {}, 503: {}},
    )
    async def predict(name: str, request: Request) -> Response:
        raw = await request_body(request, service.max_body_bytes)
        status, content, job = service.answer(name, raw)
        response = _response(content, status)
        if job is not None:  # after the response: Starlette runs it once the body is sent
            response.background = BackgroundTask(service.run_later, job)
        return response

    @router.get("/v1/graphs", summary="Every served graph")
    async def list_graphs() -> Response:
        served = service.follower.served
        infos = []
        for name in sorted(served):
            info = served[name].info()
            del info["document"]
            infos.append(info)
        return _response({"graphs": infos})

    @router.get(
        "/v1/graphs/{name}", summary="The served version of a graph", response_model=GraphInfo
    )
    async def graph_info(name: str) -> Response:
        graph = service.follower.get(name)
        if graph is None:
            return _response({"detail": f"graph {name!r} is not served"}, 404)
        served = service.models.served
        members = {
            m: (served[m].version if m in served else None) for m in graph.spec.model_names()
        }
        return _response({**graph.info(), "members": members})

    return router


class GraphFastPath:
    """Pure ASGI middleware answering ``POST /v1/graphs/{name}/predict`` directly (as
    `serving.app.PredictFastPath` does for models), then queueing the request's shadows once
    the response has been sent."""

    def __init__(self, app: Any, *, service: GraphService) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            if path.startswith(_PREFIX) and path.endswith(_SUFFIX):
                name = path[len(_PREFIX) : -len(_SUFFIX)]
                if name and "/" not in name:
                    raw = await receive_body(receive, self.service.max_body_bytes)
                    status, content, job = self.service.answer(name, raw)
                    body = render(content)
                    headers = [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ]
                    await send(
                        {"type": "http.response.start", "status": status, "headers": headers}
                    )
                    await send({"type": "http.response.body", "body": body})
                    self.service.run_later(job)
                    return
        await self.app(scope, receive, send)


def install(app: FastAPI, service: GraphService, *, fast_path: bool = True) -> None:
    """Add the graph routes to ``app`` (and the fast path); the app's lifespan must call
    `GraphService.start` / `wait_started` / `stop`."""
    app.state.graphs = service
    app.include_router(graphs_router(service))
    if fast_path:
        app.add_middleware(GraphFastPath, service=service)


async def wait_started(service: GraphService) -> None:
    """Wait (off the event loop) until the graph follower has looked at Redis once, so that a
    just-started worker does not answer 404 for a graph its sibling serves."""
    await asyncio.to_thread(service.follower.first_sync.wait, service.start_wait_seconds)
