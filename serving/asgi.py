"""Small pieces of raw ASGI shared by the fast paths (models, graphs) and the closed loop:
reading a body within a limit, giving a body already read back to an app, the JSON of every
response, and what a fast path answers in uvicorn's protocol without the ASGI cycle
(`DirectAnswer`, `DirectPath`; `serving.protocol`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

import orjson
from starlette.requests import Request
from starlette.types import Message, Receive, Scope, Send

JSON_CONTENT_TYPE = (b"content-type", b"application/json")
JSON_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY
"""orjson's options for every response: labels (booleans, numbers) as object keys, numpy arrays."""


DirectAnswer = tuple[int, bytes, Callable[[], object] | None]
"""A fast path's whole answer to a request whose body has been read: status, JSON body, and what
to run once it is sent (a graph's shadows), if anything."""


class DirectPath(Protocol):
    """A fast path that can also answer without the ASGI cycle (`serving.protocol`)."""

    def direct(
        self, path: str, headers: Iterable[tuple[bytes, bytes]], raw: bytes | None, started: float
    ) -> DirectAnswer | None:
        """The answer to ``POST path`` with the body ``raw`` (read whole; None: over the size
        limit, which `serving.app.RiverstreamAPI.direct` checks for every fast path), or None:
        the request is for the app (another route, or a body only the middleware stack answers,
        one naming an ``"id"`` or asking to be logged)."""
        ...


class FastPath(DirectPath, Protocol):
    """A pure ASGI app answering a hot route, which can also answer it directly."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None: ...


def json_default(obj: Any) -> Any:
    """orjson's ``default``: numpy scalars that `JSON_OPTIONS` do not cover as their Python
    value, anything else as its ``str``."""
    item = getattr(obj, "item", None)
    return item() if callable(item) else str(obj)


def render(content: Any) -> bytes:
    """The JSON bytes of a response (orjson, with `JSON_OPTIONS` and `json_default`)."""
    return orjson.dumps(content, default=json_default, option=JSON_OPTIONS)


async def receive_body(receive: Receive, limit: int) -> bytes | None:
    """The request body, or None once it exceeds ``limit`` bytes."""
    message = await receive()
    if message["type"] != "http.request":
        return b""
    body: bytes = message.get("body", b"")
    size = len(body)
    if size > limit:
        return None
    if not message.get("more_body", False):  # the whole body in one message, the common case
        return body
    chunks = [body]
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def send_json(send: Send, status: int, body: bytes) -> None:
    """A whole JSON response: the fast paths' way to answer (headers built once)."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [JSON_CONTENT_TYPE, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def request_body(request: Request, limit: int) -> bytes | None:
    """`receive_body` for a Starlette request (the documented routes)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit():
        return None if int(length) > limit else await request.body()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def read_upto(receive: Receive, limit: int) -> tuple[bytes, bool]:
    """The body, or its first chunks once it exceeds ``limit``; and whether more remains or
    the body exceeds ``limit`` (True for a body over the limit, even if it was read whole)."""
    chunks: list[bytes] = []
    size, more = 0, True
    while more and size <= limit:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks), more or size > limit


def replay(raw: bytes, then: Receive | None = None) -> Receive:
    """A ``receive`` giving the body already read to an app, then the rest from ``then``."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return await then() if then is not None else {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": raw, "more_body": then is not None}

    return receive


def replay_whole(raw: bytes, receive: Receive) -> Receive:
    """A ``receive`` giving ``raw`` as the whole body, then deferring to ``receive`` (for the
    disconnect): an app handed a request read whole goes on watching the real connection."""
    pending: list[Message] = [{"type": "http.request", "body": raw, "more_body": False}]

    async def again() -> Message:
        return pending.pop() if pending else await receive()

    return again
