"""Where a request to the three-member ensemble with rules spends its time, against single-model
`/v1` predict, without HTTP: the same app, the same models, one process, the same run.

`graph_predict.py` measures the ratio through uvicorn and wrk; this script explains it. It starts
a private redis-server, publishes the three classifiers and the two graphs of `graph_predict.py`
(``fraud``: rules over a ``by_metric`` weighted ensemble of ``lr``, ``tree``, ``lr2``; ``one``:
``lr`` alone) and builds the API of `serving.app` (the `riverstream serve` app, fast paths
included), then calls it as an ASGI callable (no server, no socket) and reports CPU µs per
request (`time.process_time`, minimum over interleaved trials: the machine is shared) of:

- ``model``: ``POST /v1/models/lr/predict``; ``one``: ``POST /v1/graphs/one/predict``;
  ``fraud``: ``POST /v1/graphs/fraud/predict`` (the same body, 30 features); ``v2 model`` and
  ``v2 one``: ``POST /v2/models/lr/infer`` and ``/v2/models/one/infer`` (the Open Inference
  Protocol, the same features as one FP64 tensor each);
- ``fraud, members stubbed``: the same app with the three served models replaced by stubs that
  answer at once (the graph route and its evaluation alone);
- in the graph service (no ASGI): the three members' ``predict`` in a row, the whole ``fraud``
  evaluation, and each member alone.

Then the ratios: ``model / fraud`` in process is what the server's req/s ratio tends to when the
HTTP stack costs nothing; with the HTTP stack's cost per request ``H`` (CPU µs, the hello
endpoint's in `serve_latency.py`), the ratio is ``(H + model) / (H + fraud)``, printed for a few
``H``.

    python bench/ensemble_profile.py [--trials 40] [--calls 500] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, cast

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from graph_predict import events, publish, trained  # noqa: E402
from serving_harness import KEY, best_of, start_redis  # noqa: E402

ROUTES = {
    "model": "/v1/models/lr/predict",
    "one": "/v1/graphs/one/predict",
    "fraud": "/v1/graphs/fraud/predict",
    "v2 model": "/v2/models/lr/infer",
    "v2 one": "/v2/models/one/infer",
}


def v2_body(x: dict[str, float], *, compact: bool = False) -> bytes:
    """The OIP v2 body of features ``x``: one FP64 tensor per feature (the commonest), laid out
    as `json.dumps` or (``compact``) orjson lays it out."""
    inputs = [{"name": k, "shape": [1], "datatype": "FP64", "data": [v]} for k, v in x.items()]
    return orjson.dumps({"inputs": inputs}) if compact else json.dumps({"inputs": inputs}).encode()


class Stub:
    """A served model answering at once (what the graph costs without its members)."""

    def __init__(self, real: Any) -> None:
        self.name, self.version, self.kind = real.name, real.version, real.kind
        self.meta, self.samples_learned = real.meta, real.samples_learned
        self.live = real.live
        self.answer = real.predict(events()[0])

    def predict(self, x: dict[str, Any], *, complete: bool = False) -> tuple[Any, Any]:
        return self.answer


def asgi_call(app: Any, path: str, body: bytes) -> Callable[[], Coroutine[Any, Any, int]]:
    scope = {
        "type": "http", "method": "POST", "path": path, "raw_path": path.encode(),
        "query_string": b"", "root_path": "", "scheme": "http", "http_version": "1.1",
        "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 50000),
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())],
    }  # fmt: skip

    async def call() -> int:
        status = 0
        given = False

        async def receive() -> dict[str, Any]:
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": body, "more_body": False}
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        await app(dict(scope), receive, send)
        return status

    return call


async def measure(app: Any, body: bytes, trials: int, n: int) -> dict[str, Any]:
    v2 = v2_body(events()[0])
    calls = {
        name: asgi_call(app, path, v2 if name.startswith("v2") else body)
        for name, path in ROUTES.items()
    }
    for name, call in calls.items():
        status = await call()
        if status != 200:
            raise SystemExit(f"{ROUTES[name]} answered {status}")
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(trials):
        for name, call in calls.items():
            start = time.process_time()
            for _ in range(n):
                await call()
            best[name] = min(best[name], (time.process_time() - start) / n * 1e6)
    out: dict[str, Any] = {name: round(value, 1) for name, value in best.items()}

    from stream.store.graph_follower import ServedModels

    service = app.state.graphs
    x = events()[0]
    real = dict(service.models.served)
    models = service.lookup()
    graph = service.follower.get("fraud")
    members = [models.get(name) for name in ("lr", "tree", "lr2")]
    inner = {
        "members in a row": lambda: [m.predict(x) for m in members],
        "fraud evaluation": lambda: graph.compiled.evaluate(x, models=service.lookup()),
        **{f"member {m.name}": cast(Callable[[], Any], lambda m=m: m.predict(x)) for m in members},
    }
    out["service"] = {k: round(v, 1) for k, v in best_of(inner, trials, n).items()}
    # the same app with the members stubbed: the graph route and evaluation alone
    stubs: dict[str, Any] = {name: Stub(model) for name, model in real.items()}
    # one view for every request, as the service keeps one per served mapping (its by_metric
    # weights, normalised, are remembered by the view: a view per request weighed them afresh)
    view = ServedModels(stubs, service.metric, {})
    service.lookup = lambda: view  # this instance only
    try:
        stubbed = asgi_call(app, ROUTES["fraud"], body)
        status = await stubbed()
        if status != 200:  # a stub the route no longer accepts: not a time to report
            raise SystemExit(f"{ROUTES['fraud']} with stubbed members answered {status}")
        best_stub = float("inf")
        for _ in range(trials):
            start = time.process_time()
            for _ in range(n):
                await stubbed()
            best_stub = min(best_stub, (time.process_time() - start) / n * 1e6)
        out["fraud, members stubbed"] = round(best_stub, 1)
    finally:
        del service.lookup  # the class's again
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rs-bench-ensemble-"))
    redis_proc, redis_url = start_redis(tmp)
    try:
        publish(redis_url, "bench", trained("mc"))
        os.environ.update(
            RIVERSTREAM_REDIS_URL=redis_url, RIVERSTREAM_REDIS_PREFIX="bench",
            RIVERSTREAM_SNAPSHOT_KEY=KEY, PROMETHEUS_MULTIPROC_DIR=str(tmp),
        )  # fmt: skip
        from schemas.settings import Settings
        from serving.app import create_app

        app = create_app(Settings())
        body = json.dumps({"features": events()[0]}).encode()

        async def run() -> dict[str, Any]:
            async with app.router.lifespan_context(app):
                gc.freeze()  # as the API's lifespan does once the models are loaded
                return await measure(app, body, args.trials, args.calls)

        result = asyncio.run(run())
    finally:
        redis_proc.terminate()
        redis_proc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)
    model, fraud = result["model"], result["fraud"]
    result["ratio model/fraud in process"] = round(model / fraud, 2)
    result["ratio with HTTP cost H"] = {
        h: round((h + model) / (h + fraud), 2) for h in (40, 60, 80, 120)
    }
    result["load"] = os.getloadavg()
    if args.json:
        print(json.dumps(result))
        return
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
