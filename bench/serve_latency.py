"""Serving latency: /predict (logreg, 30 features) against hello-world, same server, same run.

Starts a private redis-server and the API (`serving.runner.serve` stack: uvicorn, N workers) with
an extra ``GET /hello`` route, publishes one logreg snapshot, then drives both endpoints with
`wrk` (Debian package ``wrk``; a separate process, 127.0.0.1 only, fixed duration) at
concurrency 1, 16 and 64, and prints requests/s, p50 and p99 and the predict/hello ratios.

    python bench/serve_latency.py [--workers 2] [--duration 5] [--json]
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stream.dev.services import free_port  # noqa: E402

N_FEATURES = 30
KEY = "bench-key"


def bench_app():
    """The API of `serving.app` plus a hello-world route (uvicorn factory of each worker)."""
    from fastapi import FastAPI

    from schemas.settings import Settings
    from serving.app import JSONResponse, create_app

    app: FastAPI = create_app(Settings())

    @app.get("/hello")
    async def hello() -> JSONResponse:
        return JSONResponse({"hello": "world"})

    return app


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


def publish_logreg(redis_url: str, prefix: str) -> None:
    import redis
    from river import linear_model, preprocessing

    from learners.serialization import dump_signed
    from stream.store.snapshots import SnapshotMeta, SnapshotStore

    model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    for x in logreg_features():
        model.learn_one(x, x["x0"] + 0.5 * x["x1"] > 0)
    store = SnapshotStore(redis.Redis.from_url(redis_url), prefix, KEY.encode())
    blob = dump_signed(model, KEY.encode())
    meta = SnapshotMeta.describe(
        "lr", blob, kind="classifier", spec="logreg", samples_learned=2000, metrics={}, offsets={}
    )
    store.write(store.next_version(), {"lr": (blob, meta)}, dump_signed({}, KEY.encode()), {})


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
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {
        "rps": rps, "p50_ms": p50, "p99_ms": p99,
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errors.group(0) if errors else None,
    }  # fmt: skip


def median_run(runs: list[dict]) -> dict:
    """Median of each figure over rounds; errors summed."""
    out = {}
    for k in ("rps", "p50_ms", "p99_ms"):
        values = sorted(r[k] for r in runs)
        out[k] = values[len(values) // 2]
    out["non_2xx"] = sum(r["non_2xx"] for r in runs)
    out["socket_errors"] = [r["socket_errors"] for r in runs if r["socket_errors"]]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs per point")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install wrk (Debian's package)")
    tmp = Path(tempfile.mkdtemp(prefix="rs-bench-"))
    redis_proc, redis_url = start_redis(tmp)
    server = None
    try:
        prefix = "bench"
        publish_logreg(redis_url, prefix)
        port = free_port()
        metrics_dir = tmp / "metrics"
        metrics_dir.mkdir()
        env = {
            **os.environ, "RIVERSTREAM_REDIS_URL": redis_url, "RIVERSTREAM_REDIS_PREFIX": prefix,
            "RIVERSTREAM_SNAPSHOT_KEY": KEY, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
            "PYTHONPATH": f"{ROOT}:{ROOT / 'bench'}",
        }  # fmt: skip
        code = (
            "from serving.runner import run_uvicorn; "
            f"run_uvicorn('serve_latency:bench_app', '127.0.0.1', {port}, {args.workers})"
        )
        server = subprocess.Popen(
            [sys.executable, "-c", code], cwd=ROOT / "bench", env=env, start_new_session=True
        )
        base = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            import httpx

            try:
                return httpx.get(f"{base}/readyz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, 30, "the API")
        body = json.dumps({"features": logreg_features()[0]})
        script = tmp / "post.lua"
        script.write_text(
            'wrk.method = "POST"\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = {json.dumps(body)}\n"
        )
        run_wrk(f"{base}/hello", 16, 1, None)  # warm-up
        run_wrk(f"{base}/v1/models/lr/predict", 16, 1, script)
        rows = []
        for c in [int(c) for c in args.concurrency.split(",")]:
            # alternate short rounds and keep the median: the machine may be shared
            hellos, predicts = [], []
            for _ in range(args.rounds):
                hellos.append(run_wrk(f"{base}/hello", c, args.duration, None))
                predicts.append(run_wrk(f"{base}/v1/models/lr/predict", c, args.duration, script))
            hello, predict = median_run(hellos), median_run(predicts)
            rows.append({"concurrency": c, "hello": hello, "predict": predict,
                         "rps_ratio": predict["rps"] / hello["rps"]})  # fmt: skip
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        redis_proc.terminate()
        redis_proc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps({"workers": args.workers, "cpus": os.cpu_count(), "rows": rows}))
        return
    print(
        f"uvicorn workers={args.workers}, cpus={os.cpu_count()}, wrk -t1, "
        f"median of {args.rounds} alternating {args.duration}s runs"
    )
    print(f"{'c':>3} | {'hello req/s':>11} {'p50':>7} {'p99':>7} | {'predict req/s':>13} "
          f"{'p50':>7} {'p99':>7} | ratio | errors")  # fmt: skip
    for r in rows:
        h, p = r["hello"], r["predict"]
        print(
            f"{r['concurrency']:>3} | {h['rps']:>11.0f} {h['p50_ms']:>6.2f}m {h['p99_ms']:>6.2f}m | "
            f"{p['rps']:>13.0f} {p['p50_ms']:>6.2f}m {p['p99_ms']:>6.2f}m | {r['rps_ratio']:.2f}  | "
            f"{h['non_2xx'] + p['non_2xx']}"
        )


if __name__ == "__main__":
    main()
