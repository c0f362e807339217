"""Serving latency: /v1 predict (logreg, 30 features) against the stack's limit, same run.

The baseline is the server stack alone: a bare ASGI callable (`hello_app`, no framework) served
by the same uvicorn settings as the API (`serving.runner.run_uvicorn`: httptools, uvloop,
TCP_NODELAY, the same number of workers). Against it, in alternating `wrk` rounds (a separate
process, 127.0.0.1, ``-t1``, fixed duration) at concurrency 1, 16 and 64:

  hello    ``GET /`` of the bare ASGI callable (``{"hello":"world"}``)
  post     ``POST /`` of the bare ASGI callable with predict's body, which it reads and answers
           with predict's answer (same bytes both ways, no work): the server's share of the gap
  floor    ``POST /floor`` of the bare ASGI callable: ``orjson.loads``, River's
           ``predict_proba_one`` on the same logreg, ``orjson.dumps`` of predict's answer and
           nothing else (no checks, metrics, versions): the least an answer can cost
  predict  ``POST /v1/models/lr/predict`` ``{"features": {...}}`` of the API (`serving.app`)
  v2       ``POST /v2/models/lr/infer``, the same features as 30 FP64 inputs (same work)
  batch    ``POST /v1/models/lr/predict`` ``{"instances": [100 × {...}]}`` (``--batch``)

Each point is the median of ``--rounds`` rounds; besides requests/s, p50 and p99 it reports the
servers' CPU time per request (user + system of the server processes from /proc, over each
round): the figure least disturbed by the other loads of a shared machine. The batch's CPU per
instance is compared with the bare River loop (``predict_proba_one`` over the same 100 features
in this process). Private redis-server; one logreg snapshot, trained on 2 000 events.

The API answers its hot routes in uvicorn's protocol, without the ASGI cycle
(`serving.protocol`, session 33); the hello and the other bare targets go through the cycle.
``--asgi`` also serves this tree's API with ``RIVERSTREAM_SERVE_DIRECT_ANSWERS=false``
(``predict@asgi``...): the API as it answered through ASGI, in the same rounds.

``--before DIR`` also serves the API from another checkout (``git worktree add /tmp/before
<commit>``) and hits it in the same rounds (``predict@before``...): before/after ratios from one
run. The servers, wrk rounds and /proc readings are `serving_harness`'s (shared with
`graph_predict.py`).

    python bench/serve_latency.py [--workers 2] [--duration 3] [--rounds 3] [--targets ...]
                                  [--before DIR] [--asgi] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serving_harness import (  # KEY, start_redis, wait_for: also for memory.py
    KEY,
    Target,
    add_common_arguments,
    free_port,
    post_script,
    rounds,
    server_env,
    start_apis,
    start_redis,
    start_server,
    stop_server,
    wait_for,
    wait_http,
)

__all__ = ["KEY", "bench_app", "hello_app", "logreg_features", "publish_logreg", "start_redis",
           "trained_logreg", "wait_for"]  # fmt: skip

N_FEATURES = 30
BATCH = 100
HELLO_BODY = b'{"hello":"world"}'
# what /v1 predict answers for the benchmark's features: sent by the bare callable to a POST
CANNED = (
    b'{"model":"lr","version":1,"samples_learned":2000,"prediction":false,'
    b'"probabilities":{"false":0.9244961213547637,"true":0.07550387864523629}}'
)


def bench_app() -> Any:
    """The API of `serving.app` (uvicorn factory of each worker)."""
    from schemas.settings import Settings
    from serving.app import create_app

    return create_app(Settings())


async def _hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    body = HELLO_BODY
    if scope["method"] == "POST":  # the "post" target: read the request, answer as predict would
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = CANNED
        if scope["path"] == "/floor":  # the "floor" target: only what a River answer needs
            proba = _FLOOR_MODEL[0].predict_proba_one(orjson.loads(b"".join(chunks))["features"])
            body = orjson.dumps(
                {"model": "lr", "version": 1, "samples_learned": 2000,
                 "prediction": max(proba, key=proba.get), "probabilities": proba},
                option=orjson.OPT_NON_STR_KEYS,
            )  # fmt: skip
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


_FLOOR_MODEL: list[Any] = []


def hello_app() -> Any:
    """The baseline: a bare ASGI callable (uvicorn factory of each worker); its ``/floor`` uses
    the benchmark's logreg (trained here as `publish_logreg` trains it)."""
    _FLOOR_MODEL[:] = [trained_logreg()]
    return _hello


def logreg_features() -> list[dict[str, float]]:
    rng = random.Random(42)
    return [{f"x{i}": rng.gauss(0, 1) for i in range(N_FEATURES)} for _ in range(2000)]


def trained_logreg() -> Any:
    from river import linear_model, preprocessing

    model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    for x in logreg_features():
        model.learn_one(x, x["x0"] + 0.5 * x["x1"] > 0)
    return model


def publish_logreg(redis_url: str, prefix: str) -> None:
    import redis

    from learners.serialization import dump_signed
    from stream.store.snapshots import SnapshotMeta, SnapshotStore

    model = trained_logreg()
    store = SnapshotStore(redis.Redis.from_url(redis_url), prefix, KEY.encode())
    blob = dump_signed(model, KEY.encode())
    meta = SnapshotMeta.describe(
        "lr", blob, kind="classifier", spec="logreg", samples_learned=2000, metrics={}, offsets={}
    )
    store.write(store.next_version(), {"lr": (blob, meta)}, dump_signed({}, KEY.encode()), {})


def bare_predict_seconds(rows: list[dict[str, float]], repeat: int = 50) -> float:
    """Best time per instance of the bare River loop (``predict_proba_one``) over ``rows``."""
    model = trained_logreg()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for x in rows:
            model.predict_proba_one(x)
        best = min(best, (time.perf_counter() - start) / len(rows))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--targets", default="hello,post,floor,predict,v2,batch")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install wrk (Debian's package)")
    names = [t for t in args.targets.split(",") if t]
    tmp = Path(tempfile.mkdtemp(prefix="rs-bench-"))
    redis_proc, redis_url = start_redis(tmp)
    servers: dict[str, Any] = {}
    try:
        prefix = "bench"
        publish_logreg(redis_url, prefix)
        hello_port = free_port()
        env = server_env(redis_url, prefix, tmp / "metrics-hello")
        servers["hello"] = start_server("serve_latency:hello_app", hello_port, args.workers, env)
        bases = {"hello": f"http://127.0.0.1:{hello_port}"}
        apis = start_apis(redis_url, prefix, tmp, args.workers, args.before, args.asgi)
        for tree, (proc, base) in apis.items():
            servers["api" + tree], bases["api" + tree] = proc, base
        wait_http(bases["hello"], 30, "the bare ASGI hello")
        features = logreg_features()
        x = features[0]
        batch_rows = features[:BATCH]
        v2 = {"inputs": [{"name": k, "shape": [1], "datatype": "FP64", "data": [v]}
                         for k, v in x.items()]}  # fmt: skip
        bodies = {
            "post": json.dumps({"features": x}), "predict": json.dumps({"features": x}),
            "floor": json.dumps({"features": x}),
            "v2": json.dumps(v2), "batch": json.dumps({"instances": batch_rows}),
        }  # fmt: skip
        paths = {"hello": "/", "post": "/", "floor": "/floor", "predict": "/v1/models/lr/predict",
                 "v2": "/v2/models/lr/infer", "batch": "/v1/models/lr/predict"}  # fmt: skip
        targets: dict[str, Target] = {}
        for name in names:
            script = post_script(tmp / f"{name}.lua", bodies[name]) if name in bodies else None
            server = "hello" if name in ("hello", "post", "floor") else "api"
            for tree in ("", "@asgi", "@before") if server == "api" else ("",):
                if server + tree in servers:
                    targets[name + tree] = Target(
                        bases[server + tree] + paths[name], script, servers[server + tree].pid
                    )
        concurrencies = [int(c) for c in args.concurrency.split(",")]
        rows, loads = rounds(targets, concurrencies, args.rounds, args.duration)
        bare = bare_predict_seconds(batch_rows) if "batch" in names else None
    finally:
        for proc in servers.values():
            stop_server(proc)
        redis_proc.terminate()
        redis_proc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps({"workers": args.workers, "cpus": os.cpu_count(), "rows": rows,
                          "bare_predict_us": None if bare is None else bare * 1e6,
                          "load": loads}))  # fmt: skip
        return
    report(rows, list(targets), bare, loads, args)


def report(
    rows: list[dict[str, Any]],
    targets: list[str],
    bare: float | None,
    loads: list[float],
    args: argparse.Namespace,
) -> None:
    print(
        f"uvicorn workers={args.workers} (httptools, uvloop), cpus={os.cpu_count()}, wrk -t1, "
        f"median of {args.rounds} alternating {args.duration:g} s rounds; "
        f"hello = bare ASGI callable on the same server settings"
        + (f"; @before = the API of {args.before}" if args.before else "")
        + ("; @asgi = this API with its direct answers off" if args.asgi else "")
    )
    print(f"{'c':>3} {'target':14s} {'req/s':>8s} {'p50 ms':>7s} {'p99 ms':>7s} "
          f"{'CPU µs/req':>10s} {'÷ hello':>8s} {'CPU ÷':>6s} {'÷ predict':>9s} "
          f"{'÷ before':>8s} {'CPU ÷ b.':>8s} errors")  # fmt: skip
    for r in rows:
        h = r.get("hello")
        for t in targets:
            m = r[t]
            base, _, tree = t.partition("@")
            p = r.get("predict" + (f"@{tree}" if tree else ""))
            b = r.get(f"{t}@before")
            vs_hello = f"{m['rps'] / h['rps']:.2f}" if h else ""
            cpu_vs = f"{h['cpu_us'] / m['cpu_us']:.2f}" if h else ""
            vs_predict = f"{m['rps'] / p['rps']:.2f}" if p and base in ("v2", "batch") else ""
            vs_before = f"{m['rps'] / b['rps']:.2f}" if b else ""
            cpu_before = f"{b['cpu_us'] / m['cpu_us']:.2f}" if b else ""
            errors = m["non_2xx"] + len(m["socket_errors"])
            print(
                f"{r['concurrency']:>3} {t:14s} {m['rps']:>8.0f} {m['p50_ms']:>7.2f} "
                f"{m['p99_ms']:>7.2f} {m['cpu_us']:>10.0f} {vs_hello:>8s} {cpu_vs:>6s} "
                f"{vs_predict:>9s} {vs_before:>8s} {cpu_before:>8s} {errors}"
            )
    for r in rows:
        if "floor" in r and "predict" in r:
            f, p = r["floor"]["cpu_us"], r["predict"]["cpu_us"]
            print(f"c={r['concurrency']}: predict's CPU per request is {p - f:.0f} µs above the "
                  f"floor's (floor ÷ predict {f / p:.2f}); the floor's is {f - r['hello']['cpu_us']:.0f}"
                  " µs above hello's" if "hello" in r else "")  # fmt: skip
    if bare is not None:
        for t in ("batch", "batch@asgi", "batch@before"):
            if t in targets:
                per = [r[t]["cpu_us"] / BATCH for r in rows]
                print(
                    f"{t}: {BATCH} instances, server CPU per instance {min(per):.1f}–{max(per):.1f}"
                    f" µs; bare River predict_proba_one {bare * 1e6:.1f} µs: ratio "
                    f"{bare * 1e6 / max(per):.2f}–{bare * 1e6 / min(per):.2f}"
                )
    print("÷ hello: req/s ratio; CPU ÷: hello's CPU per request ÷ this target's (the ratio at "
          "saturation on a machine of its own); ÷ before, CPU ÷ b.: the same against @before")  # fmt: skip
    print(f"load average (1 min) before and after each concurrency: "
          f"{', '.join(f'{x:.1f}' for x in loads)}")  # fmt: skip


if __name__ == "__main__":
    main()
