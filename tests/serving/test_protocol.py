"""`serving.protocol.ApiProtocol` fed bytes by hand: what it answers directly, in one write and
without a task, and everything it leaves to uvicorn's ASGI cycle (declined bodies, other
methods, ``100-continue``, large bodies, pipelined requests, an access log), with keep-alive and
``Connection: close`` kept as the cycle keeps them. The app is a stub answering both ways; the
real API's direct answers are compared with its ASGI ones in test_protocol_served.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.server import ServerState

from serving.asgi import DirectAnswer, send_json
from serving.protocol import ApiProtocol, direct_app

DEFAULTS = [(b"date", b"Fri, 04 Dec 2026 10:00:00 GMT"), (b"server", b"uvicorn")]
HEAD = b"date: Fri, 04 Dec 2026 10:00:00 GMT\r\nserver: uvicorn\r\n"


class Transport(asyncio.Transport):
    """What the protocol writes, and whether it closed the connection."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


class Stub:
    """An ASGI app answering ``{"via":"asgi","body":...}``; directly, ``/direct`` paths
    (``/direct/fail`` raises) and nothing else."""

    def __init__(self, *, direct_answers: bool = True) -> None:
        self.direct_answers = direct_answers
        self.direct_calls: list[tuple[str, bytes]] = []
        self.asgi_calls: list[tuple[str, bytes]] = []
        self.after: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        self.asgi_calls.append((scope["path"], body))
        await send_json(send, 200, b'{"via":"asgi","size":%d}' % len(body))

    def direct(
        self, path: str, headers: Iterable[tuple[bytes, bytes]], body: bytes, started: float
    ) -> DirectAnswer | None:
        self.direct_calls.append((path, body))
        if not path.startswith("/direct"):
            return None
        if path == "/direct/fail":
            raise RuntimeError("a bug")
        if path == "/direct/after-fails":
            return 201, b'{"via":"direct","size":%d}' % len(body), self.fail_after
        return 201, b'{"via":"direct","size":%d}' % len(body), lambda: self.after.append(path)

    def fail_after(self) -> None:
        raise RuntimeError("a shadow's bug")


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def connect(
    loop: asyncio.AbstractEventLoop, app: Any, *, access_log: bool = False
) -> tuple[ApiProtocol, Transport, ServerState]:
    config = uvicorn.Config(app, http=ApiProtocol, log_level="warning", access_log=access_log)
    config.load()  # wraps the app (ProxyHeadersMiddleware), as a server does
    state = ServerState()
    state.default_headers = list(DEFAULTS)
    protocol = ApiProtocol(config=config, server_state=state, app_state={}, _loop=loop)
    transport = Transport()
    protocol.connection_made(transport)
    return protocol, transport, state


def request(
    path: str,
    body: bytes = b"{}",
    *,
    method: str = "POST",
    extra: bytes = b"",
    version: str = "1.1",
) -> bytes:
    return (
        f"{method} {path} HTTP/{version}\r\nhost: test\r\n".encode()
        + extra
        + b"content-length: %d\r\n\r\n" % len(body)
        + body
    )


def direct_response(body: bytes, *, close: bool = False) -> bytes:
    content = b'{"via":"direct","size":%d}' % len(body)
    return (
        b"HTTP/1.1 201 Created\r\n" + HEAD + b"content-type: application/json\r\n"
        + b"content-length: %d\r\n" % len(content)
        + (b"connection: close\r\n" if close else b"") + b"\r\n" + content
    )  # fmt: skip


def asgi_response(body: bytes) -> bytes:
    content = b'{"via":"asgi","size":%d}' % len(body)
    return (
        b"HTTP/1.1 200 OK\r\n" + HEAD + b"content-type: application/json\r\n"
        + b"content-length: %d\r\n\r\n" % len(content) + content
    )  # fmt: skip


def until(loop: asyncio.AbstractEventLoop, done: Callable[[], bool]) -> None:
    """Run the loop until ``done()`` (a thousand turns at most)."""

    async def turns() -> None:
        for _ in range(1000):
            if done():
                return
            await asyncio.sleep(0)
        raise AssertionError("not done after a thousand turns of the loop")

    loop.run_until_complete(turns())


def turn(loop: asyncio.AbstractEventLoop) -> None:
    """Run what is ready on the loop (a held request's answer)."""
    loop.run_until_complete(asyncio.sleep(0))


def settle(loop: asyncio.AbstractEventLoop, state: ServerState) -> None:
    """Run the loop a turn, then until every request task has finished."""
    turn(loop)
    until(loop, lambda: not state.tasks)


def test_a_post_the_app_answers_directly_is_written_in_the_next_turn_without_a_task(
    loop: asyncio.AbstractEventLoop,
) -> None:
    app = Stub()
    protocol, transport, state = connect(loop, app)
    protocol.data_received(request("/direct/a", b'{"x": 1}'))
    assert transport.writes == [] and app.direct_calls == []  # after this turn's reads
    turn(loop)
    # no task, one write
    assert state.tasks == set()
    assert transport.writes == [direct_response(b'{"x": 1}')]
    assert app.direct_calls == [("/direct/a", b'{"x": 1}')] and app.asgi_calls == []
    assert app.after == ["/direct/a"]  # run once the response is written
    assert protocol.cycle.body == bytearray()  # not kept while the connection idles
    assert not transport.closed and protocol.timeout_keep_alive_task is not None  # kept alive
    assert state.total_requests == 1
    protocol.data_received(request("/direct/b", b"[]"))  # the next one on the connection
    turn(loop)
    assert transport.writes[1:] == [direct_response(b"[]")] and state.total_requests == 2
    protocol.connection_lost(None)


def test_a_body_in_pieces_is_answered_once_whole(loop: asyncio.AbstractEventLoop) -> None:
    app = Stub()
    protocol, transport, state = connect(loop, app)
    whole = request("/direct/a", b'{"features": {"x": 1.5}}')
    for i in range(0, len(whole), 7):
        assert transport.writes == []
        protocol.data_received(whole[i : i + 7])
        turn(loop)
    assert transport.writes == [direct_response(b'{"features": {"x": 1.5}}')]
    assert state.tasks == set() and app.asgi_calls == []


@pytest.mark.parametrize(
    ("extra", "version"),
    [(b"connection: close\r\n", "1.1"), (b"", "1.0")],
    ids=["connection-close", "http-1.0"],
)
def test_a_connection_not_kept_alive_is_closed_after_the_answer(
    loop: asyncio.AbstractEventLoop, extra: bytes, version: str
) -> None:
    app = Stub()
    protocol, transport, _ = connect(loop, app)
    protocol.data_received(request("/direct/a", extra=extra, version=version))
    turn(loop)
    assert transport.writes == [direct_response(b"{}", close=True)]
    assert transport.closed and protocol.timeout_keep_alive_task is None


@pytest.mark.parametrize(
    ("path", "method", "extra"),
    [
        ("/other", "POST", b""),  # declined by the app: another route, or a body it leaves
        ("/direct/a", "PUT", b""),  # only POSTs are offered
        ("/direct/a", "POST", b"expect: 100-continue\r\n"),  # the cycle sends the 100
    ],
    ids=["declined", "put", "expect-100"],
)
def test_what_is_not_answered_directly_goes_through_the_asgi_cycle(
    loop: asyncio.AbstractEventLoop, path: str, method: str, extra: bytes
) -> None:
    app = Stub()
    protocol, transport, state = connect(loop, app)
    protocol.data_received(request(path, b'{"a": 2}', method=method, extra=extra))
    settle(loop, state)  # the cycle's task, which reads the body through receive
    assert app.asgi_calls == [(path, b'{"a": 2}')]
    continued = b"HTTP/1.1 100 Continue\r\n\r\n" if extra else b""
    assert b"".join(transport.writes) == continued + asgi_response(b'{"a": 2}')
    assert app.direct_calls == ([("/other", b'{"a": 2}')] if path == "/other" else [])


def test_a_body_over_the_high_water_mark_is_left_to_the_app_as_it_comes(
    loop: asyncio.AbstractEventLoop,
) -> None:
    app = Stub()
    protocol, transport, state = connect(loop, app)
    body = b"7" * (HIGH_WATER_LIMIT + 1000)
    whole = request("/direct/a", body)
    protocol.data_received(whole[: len(whole) - 100])
    assert len(state.tasks) == 1 and not transport.reading  # started; uvicorn paused reading
    until(loop, lambda: transport.reading)  # the app's receive resumes reading, then waits
    assert app.asgi_calls == [] and len(state.tasks) == 1
    protocol.data_received(whole[len(whole) - 100 :])
    settle(loop, state)
    assert app.asgi_calls == [("/direct/a", body)] and app.direct_calls == []
    assert b"".join(transport.writes) == asgi_response(body)


def test_pipelined_requests_are_answered_in_their_order(loop: asyncio.AbstractEventLoop) -> None:
    """A request behind one in flight (answered directly or by the app) is queued by uvicorn
    and goes through the cycle after it."""
    app = Stub()
    protocol, transport, state = connect(loop, app)
    protocol.data_received(request("/direct/1") + request("/direct/2", b"[3]"))
    settle(loop, state)
    assert b"".join(transport.writes) == direct_response(b"{}") + asgi_response(b"[3]")
    assert app.direct_calls == [("/direct/1", b"{}")]
    transport.writes.clear()
    protocol.data_received(request("/other", b"[1]") + request("/direct/3", b"[2]"))
    settle(loop, state)
    assert b"".join(transport.writes) == asgi_response(b"[1]") + asgi_response(b"[2]")
    assert app.asgi_calls == [("/direct/2", b"[3]"), ("/other", b"[1]"), ("/direct/3", b"[2]")]
    assert state.total_requests == 4


@contextlib.contextmanager
def uvicorn_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """uvicorn's error log into ``caplog`` (it does not propagate to the root's handler; the
    handler is the test phase's, so this runs inside the test)."""
    logger = logging.getLogger("uvicorn.error")
    logger.addHandler(caplog.handler)
    try:
        yield
    finally:
        logger.removeHandler(caplog.handler)


def test_an_exception_is_a_500_that_closes_the_connection(
    loop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    app = Stub()
    protocol, transport, state = connect(loop, app)
    with uvicorn_errors(caplog):
        protocol.data_received(request("/direct/fail"))
        turn(loop)
    assert transport.writes == [
        b"HTTP/1.1 500 Internal Server Error\r\n" + HEAD
        + b"content-type: text/plain; charset=utf-8\r\ncontent-length: 21\r\n"
        + b"connection: close\r\n\r\nInternal Server Error"
    ]  # fmt: skip
    assert transport.closed and state.tasks == set()
    assert "Exception in ASGI application" in caplog.text and "a bug" in caplog.text


def test_a_request_whose_connection_is_lost_before_its_turn_is_not_answered(
    loop: asyncio.AbstractEventLoop,
) -> None:
    app = Stub()
    protocol, transport, state = connect(loop, app)
    protocol.data_received(request("/direct/a"))
    protocol.connection_lost(None)
    turn(loop)
    assert transport.writes == [] and app.direct_calls == [] and state.tasks == set()


def test_what_runs_after_the_answer_may_fail_without_harm(
    loop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    app = Stub()
    protocol, transport, state = connect(loop, app)
    with uvicorn_errors(caplog):
        protocol.data_received(request("/direct/after-fails"))
        turn(loop)
    assert transport.writes == [direct_response(b"{}")] and not transport.closed
    assert "a shadow's bug" in caplog.text and state.total_requests == 1


@pytest.mark.parametrize("how", ["switched-off", "access-log"])
def test_nothing_is_answered_directly_when_switched_off_or_logged(
    loop: asyncio.AbstractEventLoop, how: str
) -> None:
    app = Stub(direct_answers=how != "switched-off")
    protocol, _, state = connect(loop, app, access_log=how == "access-log")
    assert protocol.answers is None
    protocol.data_received(request("/direct/a"))
    settle(loop, state)
    assert app.direct_calls == [] and app.asgi_calls == [("/direct/a", b"{}")]


def test_the_app_is_found_under_uvicorns_wrappers() -> None:
    class Wrapper:
        def __init__(self, app: Any) -> None:
            self.app = app

    app = Stub()
    assert direct_app(Wrapper(Wrapper(app))) is app
    assert direct_app(Wrapper(Stub(direct_answers=False))) is None
    assert direct_app(Wrapper(None)) is None
