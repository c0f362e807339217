"""``GET /v1/models/{name}/predictions/{id}`` and ``GET /v1/graphs/{name}/predictions/{id}``:
answers computed ahead by ``riverstream score --into redis``, looked up by id
(`stream.store.lookup`).

200 with the stored answer (``id``, ``target``, ``versions``, ``prediction``,
``probabilities``, ``decided_by``, as `score` writes them; a graph's also ``graph_version``,
``kind``, ``path``, ``decision`` and ``reason``) plus the table's ``table`` number and
``computed_at``; 404 when the model or graph has no table, the table has expired, or it has no
such id; 503 when Redis cannot be reached. The id is the rest of the path, so it may contain
``/``, and any other character an id may hold, a newline included (percent-encoded, ``%0A``:
Starlette's ``path`` convertor stops at one). A model's tables and a graph's are apart: a graph
named like a model has its own.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from starlette.convertors import PathConvertor, register_url_convertor

from schemas.errors import SnapshotError
from schemas.names import is_model_name
from stream.store.lookup import LookupTables
from stream.store.snapshots import RedisUnavailableError, SnapshotStore


class AnyPathConvertor(PathConvertor):
    """The rest of the path, whatever it holds: ``path``'s ``.*`` does not match a newline."""

    regex = r"[\s\S]*"


ANY_PATH = "rs_any_path"
register_url_convertor(ANY_PATH, AnyPathConvertor())

ROUTE = f"/v1/models/{{name}}/predictions/{{row_id:{ANY_PATH}}}"
GRAPH_ROUTE = f"/v1/graphs/{{name}}/predictions/{{row_id:{ANY_PATH}}}"


def lookup_router(store: SnapshotStore) -> APIRouter:
    """The lookup route, reading the tables of ``store``'s Redis and prefix."""
    tables = LookupTables(store.client, store.keys)
    router = APIRouter()

    @router.get(
        ROUTE,
        summary="A prediction computed ahead (batch scoring), by id",
        responses={404: {"description": "no stored prediction for this id"}},
        response_model=None,
    )
    def stored_prediction(name: str, row_id: str) -> Response:
        # A plain function: FastAPI runs it in its thread pool, so Redis calls do not block
        # the event loop.
        return _stored(tables, name, row_id, graph=False)

    @router.get(
        GRAPH_ROUTE,
        summary="A graph's prediction computed ahead (batch scoring), by id",
        responses={404: {"description": "no stored prediction for this id"}},
        response_model=None,
    )
    def stored_graph_prediction(name: str, row_id: str) -> Response:
        return _stored(tables, name, row_id, graph=True)

    return router


def _stored(tables: LookupTables, name: str, row_id: str, *, graph: bool) -> Response:
    what = "graph" if graph else "model"
    if not is_model_name(name):
        return _json({"detail": f"{what} {name!r} has no stored predictions"}, 404)
    try:
        answer = tables.answer(name, row_id, graph=graph)
    except RedisUnavailableError as exc:
        return _json({"detail": f"the lookup store is unreachable: {exc}"}, 503)
    except SnapshotError as exc:
        return _json({"detail": f"the lookup store failed: {exc}"}, 503)
    if answer is None:
        return _json({"detail": f"no stored prediction of {what} {name!r} for id {row_id!r}"}, 404)
    return _json(answer, 200)


def _json(content: dict[str, Any], status: int) -> Response:
    return JSONResponse(content, status)
