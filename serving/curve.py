"""``GET /v1/models/{name}/curve``: the model's learning curve, as the learner traced it.

The points come from the trace the learner writes with its snapshots (`stream.store.trace`):
one every ``RIVERSTREAM_TRACE_EVERY_LABELS`` labels, with the label count, the event time of
that label, the wall-clock time it was learned, the samples the model had learned and its
progressive metrics (``null`` where a metric is not finite). A point is visible once a snapshot
covers it; a replay rewinds the curve.

Query: ``after`` (a label count: only later points, for polling) and ``limit`` (at most that
many, oldest first). 200 ``{"model", "points": [...]}``; 404 for a model that has neither a
version nor a curve; 503 when Redis cannot be reached.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, Response

from schemas.errors import SnapshotError
from schemas.names import is_model_name
from stream.store.snapshots import RedisUnavailableError, SnapshotStore
from stream.store.trace_reader import TraceReader

ROUTE = "/v1/models/{name}/curve"
MAX_POINTS = 100_000


def curve_router(store: SnapshotStore) -> APIRouter:
    """The curve route, reading the traces of ``store``'s Redis and prefix."""
    reader = TraceReader(store.client, store.keys)
    router = APIRouter()

    @router.get(
        ROUTE,
        summary="The model's learning curve (progressive metrics every N labels)",
        responses={404: {"description": "no such model"}},
        response_model=None,
    )
    def curve(
        name: str,
        after: Annotated[int, Query(ge=0, description="Only points past this label count.")] = 0,
        limit: Annotated[
            int, Query(ge=1, le=MAX_POINTS, description="At most this many points.")
        ] = MAX_POINTS,
    ) -> Response:
        # A plain function: FastAPI runs it in its thread pool, off the event loop.
        if not is_model_name(name):
            return _json({"detail": f"unknown model {name!r}"}, 404)
        try:
            points = reader.points(name, after=after, limit=limit)
            if not points and name not in store.models():
                return _json({"detail": f"unknown model {name!r}"}, 404)
        except RedisUnavailableError as exc:
            return _json({"detail": f"the snapshot store is unreachable: {exc}"}, 503)
        except SnapshotError as exc:
            return _json({"detail": f"the snapshot store failed: {exc}"}, 503)
        return _json({"model": name, "points": [p.to_dict() for p in points]}, 200)

    return router


def _json(content: dict[str, Any], status: int) -> Response:
    return JSONResponse(content, status)
