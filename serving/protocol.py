"""uvicorn's HTTP protocol as the API runs it: TCP_NODELAY on every connection, and the hot
routes answered once a request's body is read, without the ASGI cycle.

uvicorn answers a request through an ASGI cycle: a task per request, the app's coroutines, a
``receive`` that waits on an event, two ``send`` calls that check each header against a regular
expression, and two writes to the socket (the headers, then the body). A bare ASGI hello spends
more of its CPU there than our predict spends predicting: on this machine (2 workers, ``wrk
-c16``) the hello answers ≈ 40 k requests/s, and the same protocol answering a POST with canned
bytes from its own callbacks ≈ 65 k (`bench/README.md`, *serve_latency.py*, session 33).

`ApiProtocol` keeps everything of uvicorn's protocol (parsing, the scope, the cycle with its
keep-alive, pipelining and flow-control bookkeeping) and changes one step: when the app answers
directly (``direct_answers``, `serving.app.RiverstreamAPI.direct`) and the request is a
``POST`` whose cycle would start at once, the cycle's task is held back until the body is read.
In the loop's next turn the app's `direct` answers it from the fast paths' own code
(`serving.asgi.DirectPath`): the same bytes as through ASGI, in one write, and the cycle is
completed as its ``send`` would complete it.

The next turn, as a task's first step would run, not at once: the loop reads every connection
that is ready first, then answers them one after the other, and a graph's code stays in the
caches from one answer to the next instead of being evicted by each answer's socket write. At
64 connections the three-member graph answered at once ran at 1.07 of its figure through ASGI,
in the next turn at 1.44, in the same rounds (`bench/README.md`, session 33).

Whatever `direct` declines (another route, a body naming an ``"id"``, a graph's ``"log"``)
gets its task then, and the app reads the body through ``receive`` as usual; so does a body
over uvicorn's high-water mark (64 KiB) as soon as it passes it, a request that expects
``100-continue``, a pipelined request (queued behind the one in flight, as uvicorn queues it),
and any request while the transport's writes are paused. A request whose connection is lost
before its turn is not answered. With an access log configured nothing is answered directly
(the log is written by the cycle's ``send``).

This leans on two of uvicorn's internals: its protocol starting a request's task through
``_start_asgi_task``, and the cycle's fields that its ``send`` sets. A uvicorn that starts
tasks otherwise never calls the override, and every request goes through the cycle, as slow
as before and as correct; tests/serving/test_protocol.py fails on a uvicorn that changes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterable
from typing import Any, Protocol

from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from serving.asgi import DirectAnswer

__all__ = ["ApiProtocol", "DirectApp", "direct_app"]

_JSON = b"content-type: application/json\r\n"
_TEXT = b"content-type: text/plain; charset=utf-8\r\n"
_SERVER_ERROR = b"Internal Server Error"


class DirectApp(Protocol):
    """An ASGI app whose hot routes may be answered by the protocol (`RiverstreamAPI`)."""

    direct_answers: bool

    def direct(
        self, path: str, headers: Iterable[tuple[bytes, bytes]], body: bytes, started: float
    ) -> DirectAnswer | None: ...


def direct_app(app: object) -> DirectApp | None:
    """The app under uvicorn's wrappers (each keeps the one it wraps as ``app``) that answers
    directly, if one does and its ``direct_answers`` is on."""
    for _ in range(8):  # uvicorn adds at most a few wrappers
        if app is None:
            return None
        if getattr(app, "direct_answers", False) is True:
            return app  # type: ignore[return-value]  # it has `direct` (RiverstreamAPI)
        app = getattr(app, "app", None)
    return None


class ApiProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with TCP_NODELAY forced on, answering directly what the app
    answers directly (see the module).

    TCP_NODELAY: asyncio sets it only when the listening socket's ``proto`` is IPPROTO_TCP,
    which is not the case for the socket uvicorn hands to ``--workers`` processes; without it, a
    response written in two parts (headers, then body, as the ASGI cycle writes it) waits for
    the client's delayed ACK, and every request takes ≈ 44 ms.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.answers = None if self.access_log else direct_app(self.app)
        self.arming = False  # inside on_headers_complete of a request that may be answered here
        self.held: RequestResponseCycle | None = None  # its cycle, its task held back
        self.defaults: list[tuple[bytes, bytes]] | None = None  # the server's default headers,
        self.defaults_bytes = b""  # as written (they change every second: the date)

    # asyncio types the argument as BaseTransport; a stream protocol is given a Transport, and
    # uvicorn's own override narrows it the same way (with the same ignore).
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.held = None  # never answered: no task to tell
        super().connection_lost(exc)

    def on_headers_complete(self) -> None:
        if self.answers is None or self.expect_100_continue or self.parser.get_method() != b"POST":
            super().on_headers_complete()
            return
        self.arming = True
        try:
            super().on_headers_complete()
        finally:
            self.arming = False

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        # uvicorn starts a request's task from on_headers_complete when no other request is in
        # flight (else it queues the cycle), with the app or, over `limit_concurrency`, a 503.
        if self.arming and app is self.app and not self.flow.write_paused:
            self.held = cycle
            return
        super()._start_asgi_task(cycle, app)

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        cycle = self.held
        if cycle is not None and len(cycle.body) > HIGH_WATER_LIMIT:
            # uvicorn has paused reading: the app reads the rest as it comes
            self.held = None
            super()._start_asgi_task(cycle, self.app)

    def on_message_complete(self) -> None:
        super().on_message_complete()  # the cycle's body is whole
        cycle = self.held
        if cycle is not None:
            self.held = None
            self.loop.call_soon(self.answer_held, cycle, time.perf_counter())

    def answer_held(self, cycle: RequestResponseCycle, started: float) -> None:
        """Answer a request whose task was held back, in the loop's turn after the one that
        read it (see the module), or start its task if the app declines it."""
        answers = self.answers
        if answers is None or cycle.disconnected or self.transport.is_closing():
            return  # the connection is gone: nobody to answer
        scope = cycle.scope
        try:
            answered = answers.direct(scope["path"], scope["headers"], bytes(cycle.body), started)
        except Exception as exc:  # as uvicorn's cycle answers an app's exception
            self.logger.error("Exception in ASGI application\n", exc_info=exc)
            cycle.keep_alive = False
            self.answer(cycle, 500, _SERVER_ERROR, _TEXT)
            return
        if answered is None:  # the app's: the body is there for its `receive`
            super()._start_asgi_task(cycle, self.app)
            return
        status, body, after = answered
        self.answer(cycle, status, body, _JSON)
        if after is not None:
            try:
                after()
            except Exception as exc:  # the answer is sent: said, as the cycle says it
                self.logger.error("Exception in ASGI application\n", exc_info=exc)

    def answer(
        self, cycle: RequestResponseCycle, status: int, body: bytes, content_type: bytes
    ) -> None:
        """Write the whole response at once, the bytes the cycle's ``send`` writes for
        `serving.asgi.send_json`, and complete the cycle as its ``send`` does."""
        defaults = self.server_state.default_headers
        if defaults is not self.defaults:
            self.defaults = defaults
            self.defaults_bytes = b"".join([b"%s: %s\r\n" % pair for pair in defaults])
        end = b"\r\n" if cycle.keep_alive else b"connection: close\r\n\r\n"
        self.transport.write(
            b"".join(
                (
                    STATUS_LINE[status], self.defaults_bytes, content_type,
                    b"content-length: %d\r\n" % len(body), end, body,
                )
            )
        )  # fmt: skip
        cycle.response_started = cycle.response_complete = True
        cycle.body = bytearray()  # as the cycle's `receive` empties it: not kept while idle
        if not cycle.keep_alive:
            self.transport.close()
        self.on_response_complete()
