"""The console's web app: one page, its data pushed live, and (with a token) operator actions.

Routes:

- ``GET /``: the page (``console/static/``: plain HTML, CSS and JavaScript written for it, SVG
  charts drawn by that script; nothing loaded from elsewhere, which the Content-Security-Policy
  header enforces);
- ``GET /api/events``: server-sent events, one ``state`` event at once and then one after every
  snapshot or registry change (the snapshot channel's notifications), or every second at the
  latest (`console.state.ConsoleState.update`; curves sent incrementally per page);
- ``GET /api/state``: the same, once, as JSON (every curve in full);
- ``GET /healthz``.

**Read-only by default.** The write routes ``POST /api/models/{name}/promote | rollback | pin |
unpin`` exist only when ``RIVERSTREAM_CONSOLE_TOKEN`` is set; otherwise they are not routes at
all (404) and the page shows no action. With a token, a request must:

1. carry the token in the ``X-Riverstream-Token`` header (compared in constant time); the page
   keeps it in memory only (no cookie, no storage), so a browser never sends it by itself;
2. be ``application/json``: a cross-site page cannot send that, nor a custom header, without a
   CORS preflight, which the console never grants;
3. come from the console's own origin when the browser says where it comes from (``Origin`` must
   equal the scheme and ``Host`` of the request; ``Sec-Fetch-Site`` must be ``same-origin`` or
   ``none``).

Actions go through `stream.registry.registry.Registry`, the code of ``riverstream snapshots``,
recorded in the history as done by ``console``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from console.state import ConsoleState, CurveCursor, OpsTracker
from schemas.errors import RegistryError, RiverstreamError
from schemas.settings import Settings
from stream.store.snapshots import SnapshotStore, Subscription, open_store

log = logging.getLogger(__name__)

TOKEN_HEADER = "x-riverstream-token"
UPDATE_SECONDS = 1.0
STATIC = ("index.html", "console.js", "console.css")
_TYPES = {"html": "text/html; charset=utf-8", "js": "text/javascript", "css": "text/css"}
_SECURITY = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class Promote(BaseModel):
    version: int = Field(ge=1)
    reason: str = Field("", max_length=500)


class Pin(Promote):
    pass


class Unpin(BaseModel):
    reason: str = Field("", max_length=500)


class Rollback(BaseModel):
    to: int | None = Field(None, ge=1)
    resume: Literal["skip", "replay"] = "skip"
    reason: str = Field(min_length=1, max_length=500)


def _json(content: Any, status: int = 200) -> Response:
    return JSONResponse(content, status, headers={"Cache-Control": "no-store"})


def create_console(
    settings: Settings,
    *,
    store_factory: Callable[[Settings], SnapshotStore] = open_store,
    update_seconds: float = UPDATE_SECONDS,
) -> FastAPI:
    """The console of the stream ``settings`` describes (its Redis, prefix, topics, learner)."""
    store = store_factory(settings)
    token = settings.console_token.get_secret_value() if settings.console_token else ""
    actions = bool(token)
    pages = {
        name: resources.files("console").joinpath("static", name).read_bytes() for name in STATIC
    }
    app = FastAPI(title="riverstream console", docs_url=None, redoc_url=None, openapi_url=None)

    def state(cursor: CurveCursor, ops: OpsTracker) -> dict[str, Any]:
        return ConsoleState(settings, store).update(cursor, ops, actions=actions)

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return Response(pages["index.html"], media_type=_TYPES["html"], headers=_SECURITY)

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in pages or name == "index.html":
            return Response(status_code=404)
        kind = _TYPES[name.rsplit(".", 1)[1]]
        return Response(pages[name], media_type=kind, headers=_SECURITY)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        return _json({"status": "ok", "actions": actions})

    @app.get("/api/state")
    def api_state() -> Response:
        try:
            return _json(state(CurveCursor(), OpsTracker()))
        except RiverstreamError as exc:
            return _json({"detail": str(exc)}, 503)

    @app.get("/api/events")
    async def events(request: Request) -> Response:
        return StreamingResponse(
            _stream(request, store, state, update_seconds),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    if actions:
        _install_actions(app, store, token)
    return app


async def _stream(
    request: Request,
    store: SnapshotStore,
    state: Callable[[CurveCursor, OpsTracker], dict[str, Any]],
    update_seconds: float,
) -> AsyncIterator[str]:
    """One page's events: a state at once, then after each notification (or every
    ``update_seconds``); an ``outage`` event while Redis cannot be read."""
    cursor, ops = CurveCursor(), OpsTracker()
    subscription: Subscription | None = None
    try:
        while not await request.is_disconnected():
            try:
                payload = await asyncio.to_thread(state, cursor, ops)
                yield f"event: state\ndata: {json.dumps(payload, allow_nan=False)}\n\n"
            except (RiverstreamError, ValueError) as exc:
                yield f"event: outage\ndata: {json.dumps({'detail': str(exc)})}\n\n"
                subscription = None
            if subscription is None:
                with contextlib.suppress(RiverstreamError):
                    subscription = await asyncio.to_thread(store.subscribe)
            if subscription is None:
                await asyncio.sleep(update_seconds)  # pacing the retries, not synchronisation
                continue
            try:  # a notification (snapshot, promotion...) or the update interval
                await asyncio.to_thread(subscription.get, update_seconds)
            except RiverstreamError:
                subscription.close()
                subscription = None
    finally:
        if subscription is not None:
            subscription.close()


def _same_origin(request: Request) -> bool:
    """The browser's word on where the request comes from, if it gave one, is "here"."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None:  # not a browser's cross-origin request (curl, scripts)
        return True
    host = request.headers.get("host", "")
    return origin in (f"{request.url.scheme}://{host}",)


def _install_actions(app: FastAPI, store: SnapshotStore, token: str) -> None:
    """The write routes (only with a token: see the module)."""
    from stream.registry.registry import Registry

    def guard(request: Request) -> None:
        """Runs before the body is even parsed: a refused request learns nothing more."""
        if not request.headers.get("content-type", "").startswith("application/json"):
            raise HTTPException(415, "send application/json")
        if not _same_origin(request):
            raise HTTPException(403, "cross-site requests are refused")
        given = request.headers.get(TOKEN_HEADER, "")
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, f"missing or wrong {TOKEN_HEADER} header")

    def act(fn: Callable[[Registry], dict[str, Any]]) -> Response:
        try:
            result = fn(Registry(store, by="console"))
        except RegistryError as exc:
            return _json({"detail": str(exc)}, 409)
        except RiverstreamError as exc:
            return _json({"detail": str(exc)}, 503)
        return _json(result)

    guarded = [Depends(guard)]

    # Plain functions: FastAPI runs them in its thread pool (the registry talks to Redis).
    @app.post("/api/models/{name}/promote", dependencies=guarded)
    def promote(name: str, body: Promote) -> Response:
        def run(r: Registry) -> dict[str, Any]:
            before = r.promote(name, body.version, body.reason)
            return {
                "model": name,
                "from": before,
                "to": body.version,
                "serving": r.serving_version(name),
            }

        return act(run)

    @app.post("/api/models/{name}/rollback", dependencies=guarded)
    def rollback(name: str, body: Rollback) -> Response:
        def run(r: Registry) -> dict[str, Any]:
            command = r.rollback(name, body.to, resume=body.resume, reason=body.reason)
            return {
                "model": name,
                "to": command.to,
                "resume": command.resume,
                "serving": r.serving_version(name),
            }

        return act(run)

    @app.post("/api/models/{name}/pin", dependencies=guarded)
    def pin(name: str, body: Pin) -> Response:
        def run(r: Registry) -> dict[str, Any]:
            r.pin(name, body.version, body.reason)
            return {"model": name, "pinned": body.version, "serving": r.serving_version(name)}

        return act(run)

    @app.post("/api/models/{name}/unpin", dependencies=guarded)
    def unpin(name: str, body: Unpin) -> Response:
        def run(r: Registry) -> dict[str, Any]:
            serving = r.unpin(name, body.reason)
            return {"model": name, "serving": serving}

        return act(run)
