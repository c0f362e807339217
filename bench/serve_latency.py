"""Serving latency: /v1 predict (logreg, 30 features) against the stack's limit, same run.

The baseline is the server stack alone: a bare ASGI callable (`hello_app`, no framework) served
by the same uvicorn settings as the API (`serving.runner.run_uvicorn`: httptools, uvloop,
TCP_NODELAY, the same number of workers). Against it, in alternating `wrk` rounds (a separate
process, 127.0.0.1, ``-t1``, fixed duration) at concurrency 1, 16 and 64:

  hello    ``GET /`` of the bare ASGI callable (``{"hello":"world"}``)
  post     ``POST /`` of the bare ASGI callable with predict's body, which it reads and answers
           with predict's answer (same bytes both ways, no work): the server's share of the gap
  predict  ``POST /v1/models/lr/predict`` ``{"features": {...}}`` of the API (`serving.app`)
  v2       ``POST /v2/models/lr/infer``, the same features as 30 FP64 inputs (same work)
  batch    ``POST /v1/models/lr/predict`` ``{"instances": [100 × {...}]}`` (``--batch``)

Each point is the median of ``--rounds`` rounds; besides requests/s, p50 and p99 it reports the
servers' CPU time per request (user + system of the server processes from /proc, over each
round): the figure least disturbed by the other loads of a shared machine. The batch's CPU per
instance is compared with the bare River loop (``predict_proba_one`` over the same 100 features
in this process). Private redis-server; one logreg snapshot, trained on 2 000 events.

    python bench/serve_latency.py [--workers 2] [--duration 3] [--rounds 3] [--targets ...] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stream.dev.services import free_port  # noqa: E402

N_FEATURES = 30
BATCH = 100
KEY = "bench-key"
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
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        body = CANNED
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


def hello_app() -> Any:
    """The baseline: a bare ASGI callable (uvicorn factory of each worker)."""
    return _hello


def wait_for(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} did not come up within {timeout}s")
        time.sleep(0.05)


def start_redis(workdir: Path) -> tuple[subprocess.Popen, str]:
    import redis

    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"

    def up() -> bool:
        try:
            return bool(redis.Redis.from_url(url).ping())
        except redis.ConnectionError:
            return False

    wait_for(up, 10, "redis-server")
    return proc, url


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


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * _UNITS[unit]


def run_wrk(url: str, connections: int, duration: float, script: Path | None) -> dict:
    argv = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--latency",
        "--timeout",
        "5s",
    ]
    if script is not None:
        argv += ["-s", str(script)]
    out = subprocess.run([*argv, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {
        "rps": rps, "requests": total, "p50_ms": p50, "p99_ms": p99,
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errors.group(0) if errors else None,
    }  # fmt: skip


def median_run(runs: list[dict]) -> dict:
    """Median of each figure over rounds; errors summed."""
    out = {}
    for k in ("rps", "p50_ms", "p99_ms", "cpu_us"):
        values = sorted(r[k] for r in runs if k in r)
        if values:
            out[k] = values[len(values) // 2]
    out["non_2xx"] = sum(r["non_2xx"] for r in runs)
    out["socket_errors"] = [r["socket_errors"] for r in runs if r["socket_errors"]]
    return out


def cpu_seconds(root: int) -> float:
    """User + system CPU seconds of process ``root`` and of its children (uvicorn workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    total, pending = 0.0, [root]
    while pending:
        pid = pending.pop()
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{pid}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError, IndexError):
            continue  # a process that ended meanwhile
    return total


def start_server(factory: str, port: int, workers: int, env: dict[str, str]) -> subprocess.Popen:
    code = (
        "from serving.runner import run_uvicorn; "
        f"run_uvicorn({factory!r}, '127.0.0.1', {port}, {workers})"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT / "bench", env=env, start_new_session=True
    )


def stop_server(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def post_script(path: Path, body: str) -> Path:
    path.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(body)}\n"
    )
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs per point")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--targets", default="hello,predict,v2,batch")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install wrk (Debian's package)")
    targets = [t for t in args.targets.split(",") if t]
    tmp = Path(tempfile.mkdtemp(prefix="rs-bench-"))
    redis_proc, redis_url = start_redis(tmp)
    servers: dict[str, subprocess.Popen] = {}
    loads = [os.getloadavg()[0]]
    rows = []
    try:
        prefix = "bench"
        publish_logreg(redis_url, prefix)
        api_port, hello_port = free_port(), free_port()
        metrics_dir = tmp / "metrics"
        metrics_dir.mkdir()
        env = {
            **os.environ, "RIVERSTREAM_REDIS_URL": redis_url, "RIVERSTREAM_REDIS_PREFIX": prefix,
            "RIVERSTREAM_SNAPSHOT_KEY": KEY, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
            "PYTHONPATH": f"{ROOT}:{ROOT / 'bench'}",
        }  # fmt: skip
        servers["api"] = start_server("serve_latency:bench_app", api_port, args.workers, env)
        servers["hello"] = start_server("serve_latency:hello_app", hello_port, args.workers, env)
        api, hello = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{hello_port}"

        def ready(url: str) -> bool:
            import httpx

            try:
                return httpx.get(url, timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(lambda: ready(f"{api}/readyz"), 30, "the API")
        wait_for(lambda: ready(f"{hello}/"), 30, "the bare ASGI hello")
        features = logreg_features()
        x = features[0]
        v2_body = {
            "inputs": [
                {"name": k, "shape": [1], "datatype": "FP64", "data": [v]} for k, v in x.items()
            ]
        }
        batch_rows = features[:BATCH]
        plan = {
            "hello": (f"{hello}/", None, "hello"),
            "post": (f"{hello}/", post_script(tmp / "post.lua", json.dumps({"features": x})),
                     "hello"),
            "predict": (f"{api}/v1/models/lr/predict",
                        post_script(tmp / "predict.lua", json.dumps({"features": x})), "api"),
            "v2": (f"{api}/v2/models/lr/infer",
                   post_script(tmp / "v2.lua", json.dumps(v2_body)), "api"),
            "batch": (f"{api}/v1/models/lr/predict",
                      post_script(tmp / "batch.lua", json.dumps({"instances": batch_rows})),
                      "api"),
        }  # fmt: skip
        for t in targets:  # warm-up
            url, script, _ = plan[t]
            run_wrk(url, 16, 1, script)
        for c in [int(c) for c in args.concurrency.split(",")]:
            # alternate short rounds and keep the median: the machine is shared
            runs: dict[str, list[dict]] = {t: [] for t in targets}
            for _ in range(args.rounds):
                for t in targets:
                    url, script, server = plan[t]
                    cpu0 = cpu_seconds(servers[server].pid)
                    run = run_wrk(url, c, args.duration, script)
                    cpu = cpu_seconds(servers[server].pid) - cpu0
                    run["cpu_us"] = cpu / max(1, run["requests"]) * 1e6
                    runs[t].append(run)
            rows.append({"concurrency": c, **{t: median_run(runs[t]) for t in targets}})
            loads.append(os.getloadavg()[0])
        bare = bare_predict_seconds(batch_rows) if "batch" in targets else None
    finally:
        for server in servers.values():
            stop_server(server)
        redis_proc.terminate()
        redis_proc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps({"workers": args.workers, "cpus": os.cpu_count(), "rows": rows,
                          "bare_predict_us": None if bare is None else bare * 1e6,
                          "load": loads}))  # fmt: skip
        return
    print(
        f"uvicorn workers={args.workers} (httptools, uvloop), cpus={os.cpu_count()}, wrk -t1, "
        f"median of {args.rounds} alternating {args.duration:g} s rounds; "
        f"hello = bare ASGI callable on the same server settings"
    )
    print(f"{'c':>3} {'target':8s} {'req/s':>8s} {'p50 ms':>7s} {'p99 ms':>7s} {'CPU µs/req':>10s} "
          f"{'÷ hello':>8s} {'CPU ÷':>6s} {'÷ predict':>9s} errors")  # fmt: skip
    for r in rows:
        h = r.get("hello")
        p = r.get("predict")
        for t in targets:
            m = r[t]
            vs_hello = f"{m['rps'] / h['rps']:.2f}" if h else ""
            cpu_vs = f"{h['cpu_us'] / m['cpu_us']:.2f}" if h else ""
            vs_predict = f"{m['rps'] / p['rps']:.2f}" if p and t in ("v2", "batch") else ""
            errors = m["non_2xx"] + len(m["socket_errors"])
            print(
                f"{r['concurrency']:>3} {t:8s} {m['rps']:>8.0f} {m['p50_ms']:>7.2f} "
                f"{m['p99_ms']:>7.2f} {m['cpu_us']:>10.0f} {vs_hello:>8s} {cpu_vs:>6s} "
                f"{vs_predict:>9s} {errors}"
            )
    if bare is not None:
        per = [r["batch"]["cpu_us"] / BATCH for r in rows]
        print(
            f"batch of {BATCH}: server CPU per instance {min(per):.1f}–{max(per):.1f} µs; bare "
            f"River predict_proba_one {bare * 1e6:.1f} µs: ratio {bare * 1e6 / max(per):.2f}–"
            f"{bare * 1e6 / min(per):.2f}"
        )
    print("÷ hello: req/s ratio; CPU ÷: hello's CPU per request ÷ this target's (the ratio at "
          "saturation on a machine of its own)")  # fmt: skip
    print(f"load average (1 min) before and after each concurrency: "
          f"{', '.join(f'{x:.1f}' for x in loads)}")  # fmt: skip


if __name__ == "__main__":
    main()
