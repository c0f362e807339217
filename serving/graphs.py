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

Shadows run after the response, off the request path (`serving.shadows`); the request and
response bodies are in `serving.graph_bodies`, the evaluation and its statuses in
`serving.graph_service`.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Iterable
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask

from serving.asgi import (
    JSON_OPTIONS,
    DirectAnswer,
    json_default,
    receive_body,
    render,
    replay,
    request_body,
    send_json,
)
from serving.graph_bodies import parse_graph_body
from serving.graph_service import GRAPH_PREDICT_ROUTE, GraphService
from serving.shadows import SHADOW_BACKLOG, GraphMetrics, ShadowJob, ShadowRunner

__all__ = [
    "GRAPHS_PREFIX", "GRAPH_PREDICT_ROUTE", "SHADOW_BACKLOG", "GraphFastPath", "GraphMetrics",
    "GraphService",
    "ShadowJob", "ShadowRunner", "graphs_router", "install", "parse_graph_body", "render",
    "wait_started",
]  # fmt: skip

GRAPHS_PREFIX, _SUFFIX = "/v1/graphs/", "/predict"
_NAME_START, _NAME_END = len(GRAPHS_PREFIX), -len(_SUFFIX)


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
    the response has been sent. A body that may ask for its answer to be logged (``"log"``)
    goes on to the app, where the closed loop (`serving.feedback`) logs it."""

    def __init__(self, app: Any, *, service: GraphService) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            name = _graph_name(scope["path"])
            if name is not None:
                started = time.perf_counter()
                raw = await receive_body(receive, self.service.max_body_bytes)
                answered = self.respond(name, raw, started)
                if answered is None:  # logged: the closed loop's (serving.feedback)
                    await self.app(scope, replay(raw), send)  # type: ignore[arg-type]
                    return
                status, body, job = answered
                await send_json(send, status, body)
                if job is not None:
                    self.service.run_later(job)
                return
        await self.app(scope, receive, send)

    def respond(
        self, name: str, raw: bytes | None, started: float
    ) -> tuple[int, bytes, ShadowJob | None] | None:
        """Status, JSON and shadows of the answer to ``raw`` (None: over the size limit), or None
        for a body that may ask for its answer to be logged (the app's)."""
        service = self.service
        answered: tuple[int, bytes | dict[str, Any], ShadowJob | None] | None
        answered = service.answer_read(name, raw, started)  # commonest: no "log"
        if answered is None:
            if raw is not None and b'"log"' in raw:
                return None
            answered = service.answer_general(name, raw, started)
        status, content, job = answered
        if isinstance(content, bytes):  # rendered already (`GraphService.answer_read`)
            return status, content, job
        # `render`, inline: a call less on the hot path (as PredictFastPath)
        return status, orjson.dumps(content, default=json_default, option=JSON_OPTIONS), job

    def direct(
        self, path: str, headers: Iterable[tuple[bytes, bytes]], raw: bytes | None, started: float
    ) -> DirectAnswer | None:
        """`serving.asgi.DirectPath.direct`: a graph's predict answered as `__call__` does."""
        name = _graph_name(path)
        if name is None:
            return None
        answered = self.respond(name, raw, started)
        if answered is None:
            return None
        status, out, job = answered
        return status, out, None if job is None else functools.partial(self.service.run_later, job)


def _graph_name(path: str) -> str | None:
    """The graph named by a path ``/v1/graphs/{name}/predict``, else None."""
    if path.startswith(GRAPHS_PREFIX) and path.endswith(_SUFFIX):
        name = path[_NAME_START:_NAME_END]
        if name and "/" not in name:
            return name
    return None


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
