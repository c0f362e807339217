"""The Open Inference Protocol v2's infer route in raw ASGI (`serving.v2` builds it)."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from serving.asgi import DirectAnswer, receive_body, send_json

Respond = Callable[
    [str, str | None, bytes | None, Mapping[str, str], float], tuple[int, bytes, Any]
]
"""``(name, version, body, headers, started) → (status, JSON body, shadow job)`` of an infer
request (``started``: when it came, its duration observed from then)."""
V2_MODELS_PREFIX = "/v2/models/"
_V2_INFER = "/infer"
READ_HEADERS = frozenset({b"inference-header-content-length", b"content-encoding"})
"""The request headers ``respond`` reads (only these are decoded)."""


def read_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """The `READ_HEADERS` of a request's ASGI headers, whose names are lower-case (as the ASGI
    specification has servers give them, and Starlette's `Headers` reads them).

    >>> read_headers([(b"content-encoding", b"gzip"), (b"host", b"h")])
    {'content-encoding': 'gzip'}
    """
    found = {}
    for name, value in raw:  # a plain loop: a comprehension over a generator costs twice
        if name in READ_HEADERS:
            found[name.decode("latin-1")] = value.decode("latin-1")
    return found


class V2InferFastPath:
    """Pure ASGI middleware answering ``POST /v2/models/{name}[/versions/{v}]/infer`` through the
    same ``respond`` as the documented routes, without FastAPI's routing, dependency solving and
    request objects (≈ half of an infer request's CPU, measured in process); everything else
    goes to ``app``. A graph's shadows are queued once the response is sent."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        respond: Respond,
        max_body_bytes: int,
        run_later: Callable[[Any], None] | None,
    ) -> None:
        self.app = app
        self.respond = respond
        self.max_body_bytes = max_body_bytes
        self.run_later = run_later

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            route = _infer_route(scope["path"])
            if route is not None:
                started = time.perf_counter()
                headers = read_headers(scope["headers"])
                raw = await receive_body(receive, self.max_body_bytes)
                status, body, job = self.respond(*route, raw, headers, started)
                await send_json(send, status, body)
                if job is not None and self.run_later is not None:
                    self.run_later(job)
                return
        await self.app(scope, receive, send)

    def direct(
        self, path: str, headers: Iterable[tuple[bytes, bytes]], raw: bytes | None, started: float
    ) -> DirectAnswer | None:
        """`serving.asgi.DirectPath.direct`: the infer route answered as `__call__` does."""
        route = _infer_route(path)
        if route is None:
            return None
        status, out, job = self.respond(*route, raw, read_headers(headers), started)
        after = None
        if job is not None and self.run_later is not None:
            after = functools.partial(self.run_later, job)
        return status, out, after


def _infer_route(path: str) -> tuple[str, str | None] | None:
    """The model (and version) named by ``/v2/models/{name}[/versions/{v}]/infer``, else None.

    >>> _infer_route("/v2/models/lr/versions/3/infer"), _infer_route("/v2/models/lr/infer")
    (('lr', '3'), ('lr', None))
    """
    if path.startswith(V2_MODELS_PREFIX) and path.endswith(_V2_INFER):
        name, sep, version = path[len(V2_MODELS_PREFIX) : -len(_V2_INFER)].partition("/versions/")
        if name and "/" not in name and (not sep or (version and "/" not in version)):
            return name, version or None
    return None
