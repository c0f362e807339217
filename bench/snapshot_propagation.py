"""Snapshot propagation: from `SnapshotStore.write` to subscribers and to every API worker.

Against a private redis-server on 127.0.0.1, for a logreg-sized snapshot and for a ≥ 50 MB one:

1. store: write duration, write → notification received by a subscriber, and write → the
   subscriber holding the verified, unpickled model (the follower's path, without HTTP);
2. API: write → every worker of a running API (`serving.runner.serve`, N workers) serving the new
   version, observed by polling ``/metrics`` whose version gauge is the minimum over live
   workers (so this includes the polling interval).

    python bench/snapshot_propagation.py [--iterations 200] [--workers 2] [--big-mb 50]
"""

from __future__ import annotations

import argparse
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import redis  # noqa: E402
from river import linear_model, preprocessing  # noqa: E402

from learners.serialization import dump_signed  # noqa: E402
from stream.dev.services import free_port  # noqa: E402
from stream.store.snapshots import SnapshotMeta, SnapshotStore  # noqa: E402

KEY = b"bench-key"


def wait_for(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} not reached within {timeout}s")
        time.sleep(0.001)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def stop_api(server: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM the API server; SIGKILL its process group if it has not exited in 30 s."""
    if server is None:
        return
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def summary(name: str, seconds: list[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return (f"  {name:<34} n={len(ms):<4} p50={percentile(ms, .5):8.2f} ms  "
            f"p99={percentile(ms, .99):8.2f} ms  max={max(ms):8.2f} ms")  # fmt: skip


def logreg() -> object:
    rng = random.Random(1)
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    for _ in range(500):
        x = {f"x{i}": rng.gauss(0, 1) for i in range(30)}
        model.learn_one(x, x["x0"] > 0)
    return model


def big_object(megabytes: int) -> object:
    """An object graph (many small dicts of floats, like a forest's statistics) of ~N MB."""
    rng = random.Random(2)
    keys = [f"f{i}" for i in range(10)]
    n = megabytes * 1_000_000 // 95
    return [{k: rng.random() for k in keys} for _ in range(n)]


def write(store: SnapshotStore, name: str, blob: bytes) -> tuple[int, float]:
    version = store.next_version()
    meta = SnapshotMeta.describe(
        name, blob, kind="classifier", spec="bench", samples_learned=version, metrics={}, offsets={}
    )
    started = time.perf_counter()
    store.write(version, {name: (blob, meta)}, b"", {})
    return version, started


def bench_store(store: SnapshotStore, name: str, blob: bytes, iterations: int) -> None:
    notified: queue.Queue = queue.Queue()
    loaded: queue.Queue = queue.Queue()
    stop = threading.Event()
    sub = store.subscribe()

    def subscriber() -> None:
        while not stop.is_set():
            note = sub.get(timeout=0.1)
            if note is not None and note.model == name:
                notified.put(time.perf_counter())
                store.load_model(name, note.version)
                loaded.put(time.perf_counter())

    thread = threading.Thread(target=subscriber, daemon=True)
    thread.start()
    time.sleep(0.2)  # let the subscription settle before measuring
    writes, to_note, to_loaded = [], [], []
    for _ in range(iterations):
        _, started = write(store, name, blob)
        writes.append(time.perf_counter() - started)
        to_note.append(notified.get(timeout=60) - started)
        to_loaded.append(loaded.get(timeout=60) - started)
    stop.set()
    thread.join()
    sub.close()
    print(summary("write (chunks + MULTI/EXEC + PUBLISH)", writes))
    print(summary("write -> notification received", to_note))
    print(summary("write -> model verified + unpickled", to_loaded))


def bench_api(
    store: SnapshotStore, base: str, name: str, blob: bytes, iterations: int, probe: bool
) -> None:
    """Propagation to every worker; with ``probe``, the latency of /predict on another model
    meanwhile (a worker unpickling a big model holds the GIL: its requests wait)."""
    http = httpx.Client(base_url=base, timeout=30)
    pattern = f'riverstream_model_version{{model="{name}"}} '

    def served_everywhere(version: int) -> bool:
        try:
            text = http.get("/metrics").text
        except httpx.TransportError:  # a keep-alive connection closed under us: poll again
            return False
        for line in text.splitlines():
            if line.startswith(pattern):
                return float(line[len(pattern) :]) >= version
        return False

    stop = threading.Event()
    latencies: list[float] = []

    def probing() -> None:  # sequential /predict calls on the small model, new connection each
        x = {f"x{i}": 0.5 for i in range(30)}
        while not stop.is_set():
            started = time.perf_counter()
            httpx.post(f"{base}/v1/models/lr/predict", json={"features": x}, timeout=60)
            latencies.append(time.perf_counter() - started)

    prober = threading.Thread(target=probing, daemon=True)
    if probe:
        prober.start()

    seconds, polls = [], []
    for _ in range(iterations):
        version, started = write(store, name, blob)
        n = 0
        while not served_everywhere(version):
            n += 1
            time.sleep(0.002)  # polling /metrics flat out would itself slow the workers down
            if time.perf_counter() - started > 120:
                raise SystemExit(f"v{version} not served everywhere after 120 s")
        seconds.append(time.perf_counter() - started)
        polls.append(n)
    stop.set()
    if probe:
        prober.join()
    t = time.perf_counter()
    served_everywhere(0)
    print(summary(f"write -> every API worker serving {name}", seconds))
    print(f"  (one /metrics poll takes ≈ {(time.perf_counter() - t) * 1000:.1f} ms)")
    if probe:
        print(summary("meanwhile: /predict lr (new conn.)", latencies))
    http.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--big-iterations", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--big-mb", type=int, default=56, help="≈ size of the big snapshot")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rs-prop-"))
    port = free_port()
    redis_proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)

    def up() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    server = None
    try:
        wait_for(up, 10, "redis-server")
        store = SnapshotStore(client, "bench", KEY)
        small = dump_signed(logreg(), KEY)
        big = dump_signed(big_object(args.big_mb), KEY)
        print(f"logreg snapshot: {len(small)} bytes; big snapshot: {len(big) / 1e6:.1f} MB")
        print("store (subscriber thread in this process):")
        bench_store(store, "lr", small, args.iterations)
        bench_store(store, "big", big, args.big_iterations)
        api_port = free_port()
        env = {
            **os.environ, "RIVERSTREAM_REDIS_URL": url, "RIVERSTREAM_REDIS_PREFIX": "bench",
            "RIVERSTREAM_SNAPSHOT_KEY": KEY.decode(), "RIVERSTREAM_SERVE_PORT": str(api_port),
            "RIVERSTREAM_SERVE_WORKERS": str(args.workers),
        }  # fmt: skip
        code = "from schemas.settings import Settings; from serving.runner import serve; serve(Settings())"
        server = subprocess.Popen(
            [sys.executable, "-c", code], cwd=ROOT, env=env, start_new_session=True
        )
        base = f"http://127.0.0.1:{api_port}"

        def ready() -> bool:
            try:
                return httpx.get(f"{base}/readyz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, 60, "the API")
        print(f"API ({args.workers} uvicorn workers, observed through /metrics):")
        bench_api(store, base, "lr", small, min(args.iterations, 100), probe=False)
        bench_api(store, base, "big", big, args.big_iterations, probe=True)
    finally:
        stop_api(server)
        client.close()
        redis_proc.terminate()
        redis_proc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
