"""Instructions a request, per route, counted by callgrind: exact where timings on a shared VM
swing 10–25 %.

Starts a private redis-server, publishes `graph_predict.py`'s three classifiers and graphs,
then, for each route, runs the API (`serving.app.create_app`) in a child process under
``valgrind --tool=callgrind``: the child starts the app's lifespan, waits until the graphs are
served, warms the route with 50 requests, then calls the app as an ASGI callable ``--requests``
times (each request's coroutine driven by hand: the fast paths never suspend). Collection is on
only inside ``itertools.filterfalse``'s step, which drives those requests (``--toggle-collect``),
so start-up, imports and the warm-up are not counted. Prints the instructions a request of each
route and their ratio to `/v1`'s; the routes' own work, without uvicorn's (identical for every
route) and without the cache misses a server adds (see bench/README.md, session 31).

``--protocol`` feeds each request's bytes to the API's HTTP protocol instead
(`serving.protocol.ApiProtocol` on one kept-alive connection, no socket), which answers the hot
routes before returning (its direct answers): uvicorn's parsing, scope, cycle and keep-alive
bookkeeping and the response's bytes are counted too, the kernel's work is not.

Each child takes ≈ 1.5 minutes (the imports under valgrind); two run at a time.

    python bench/route_instructions.py [--requests 2000] [--routes v1,one,fraud,v2] [--json]
        [--protocol] [--keep DIR]   # keeps callgrind.<route> there, for callgrind_annotate
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import orjson
import serving_harness as harness
from ensemble_profile import asgi_call, v2_body

ROUTES = {
    "v1": "/v1/models/lr/predict",
    "one": "/v1/graphs/one/predict",
    "fraud": "/v1/graphs/fraud/predict",
    "v2": "/v2/models/lr/infer",
}


def child(route: str, requests: int, features: Path, protocol: bool) -> None:
    """Under callgrind: the app, its route called ``requests`` times inside `filterfalse`."""
    from schemas.settings import Settings
    from serving.app import create_app

    app = create_app(Settings())
    x = json.loads(features.read_text())
    raw = v2_body(x, compact=True) if route == "v2" else orjson.dumps({"features": x})
    asyncio.run(drive(app, ROUTES[route], raw, requests, protocol))


class _Sink(asyncio.Transport):
    """A connection's transport that keeps the last response written."""

    last = b""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def write(self, data: Any) -> None:
        self.last = bytes(data)

    def is_closing(self) -> bool:
        return False


class _Turns:
    """The protocol's loop: timers and tasks on the running loop; what it asks to run in the
    next turn (`call_soon`) is kept and run by `run_ready`, without a turn of the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.ready: list[tuple[Callable[..., object], tuple[Any, ...]]] = []

    def call_soon(self, callback: Callable[..., object], *args: Any) -> None:
        self.ready.append((callback, args))

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> Any:
        return self.loop.call_later(delay, callback, *args)

    def create_task(self, coro: Any, **kwargs: Any) -> Any:
        return self.loop.create_task(coro, **kwargs)

    def run_ready(self) -> None:
        ready, self.ready = self.ready, []
        for callback, args in ready:
            callback(*args)


def fed_to_protocol(app: Any, path: str, raw: bytes) -> Callable[[], int]:
    """A call giving the whole request's bytes to the API's HTTP protocol on one kept-alive
    connection (`serving.protocol.ApiProtocol`, as a server's worker does; no socket), and the
    turn of the loop where it answers (its direct answers): the status it wrote."""
    import uvicorn
    from uvicorn.server import ServerState

    from serving.protocol import ApiProtocol

    config = uvicorn.Config(app, http=ApiProtocol, log_level="warning", access_log=False)
    config.load()
    state = ServerState()
    state.default_headers = [(b"date", b"Fri, 04 Dec 2026 10:00:00 GMT"), (b"server", b"uvicorn")]
    turns = _Turns(asyncio.get_running_loop())
    protocol = ApiProtocol(config=config, server_state=state, app_state={}, _loop=turns)
    transport = _Sink()
    protocol.connection_made(transport)
    request = (
        b"POST %s HTTP/1.1\r\nhost: 127.0.0.1:8000\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n" % (path.encode(), len(raw))
    ) + raw

    def call() -> int:
        transport.last = b""
        protocol.data_received(request)
        turns.run_ready()  # the loop's next turn, where the protocol answers
        if not transport.last:
            raise RuntimeError("not answered directly")
        return int(transport.last[9:12])

    return call


def at_once(call: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """The status of an ASGI call that never suspends (a fast path), driven by hand."""
    coroutine = call()
    try:
        coroutine.send(None)
    except StopIteration as done:
        status: int = done.value
        return status
    coroutine.close()
    raise RuntimeError("the request suspended: not a fast path")


async def drive(app: Any, path: str, raw: bytes, requests: int, protocol: bool) -> None:
    async with app.router.lifespan_context(app):
        graphs = asgi_call(app, ROUTES["fraud"], b'{"features": {"x0": 0.5}}')
        for _ in range(600):  # the graphs load after the models
            if await graphs() == 200:
                break
            await asyncio.sleep(0.1)
        if protocol:
            answer = fed_to_protocol(app, path, raw)
        else:
            call = asgi_call(app, path, raw)
            answer = lambda: at_once(call)  # noqa: E731
        for _ in range(50):
            assert answer() == 200
        # counted: only inside filterfalse's step (valgrind --toggle-collect=filterfalse_next)
        collections.deque(
            itertools.filterfalse(lambda _: answer() != 200, range(requests)), maxlen=0
        )


def count(route: str, requests: int, env: dict[str, str], work: Path, protocol: bool) -> int:
    out = work / f"callgrind.{route}"
    command = [
        "valgrind", "--tool=callgrind", "--collect-atstart=no",
        "--toggle-collect=filterfalse_next", f"--callgrind-out-file={out}",
        sys.executable, __file__, "--child", route, "--requests", str(requests),
        "--features", str(work / "x.json"), *(["--protocol"] if protocol else []),
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"{route}: callgrind failed\n{done.stderr[-2000:]}")
    return int(found.group(1)) // requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--routes", default=",".join(ROUTES))
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", type=Path, help="a folder to keep each route's callgrind file in")
    parser.add_argument(
        "--protocol", action="store_true",
        help="feed each request's bytes to the API's HTTP protocol (its direct answers: parsing, "
        "uvicorn's bookkeeping and the write included) instead of calling the app over ASGI",
    )  # fmt: skip
    parser.add_argument("--child", choices=list(ROUTES), help=argparse.SUPPRESS)
    parser.add_argument("--features", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.requests, args.features, args.protocol)
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind not found: apt-get install valgrind (Debian's package)")
    import graph_predict

    routes = args.routes.split(",")
    work = Path(tempfile.mkdtemp(prefix="rs-bench-instructions-"))
    redis_proc, redis_url = harness.start_redis(work)
    try:
        graph_predict.publish(redis_url, "bench", graph_predict.trained())
        (work / "x.json").write_text(json.dumps(graph_predict.events()[0]))
        env = {**harness.server_env(redis_url, "bench", work / "metrics"), "PYTHONHASHSEED": "0"}
        with ThreadPoolExecutor(max_workers=2) as pool:
            counts = dict(zip(routes, pool.map(
                lambda r: count(r, args.requests, env, work, args.protocol), routes), strict=True))  # fmt: skip
    finally:
        redis_proc.terminate()
        redis_proc.wait(timeout=10)
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            for route in routes:
                kept = work / f"callgrind.{route}"
                if kept.exists():
                    shutil.copy(kept, args.keep / kept.name)
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(counts))
        return
    through = "the API's HTTP protocol" if args.protocol else "the app over ASGI"
    print(f"instructions a request through {through} (callgrind, {args.requests} requests after "
          "50 to warm up)")  # fmt: skip
    for route, n in counts.items():
        ratio = f"  /v1 ÷ this {counts['v1'] / n:.2f}" if "v1" in counts else ""
        print(f"{route:6} {ROUTES[route]:28} {n:>9,}{ratio}")


if __name__ == "__main__":
    main()
