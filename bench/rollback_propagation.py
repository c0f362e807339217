"""Rollback propagation: from `Registry.rollback` returning to every API worker serving the target.

Against a private redis-server and a real API (`serving.runner.serve`, N uvicorn workers) on
127.0.0.1: three logreg versions are written, then rollbacks alternate between the oldest and
the newest version. Each worker's served version is read from its own prometheus-client
multiprocess file (``riverstream_model_version``), so "every worker" is checked per process, in
both directions. Rollback commands for the learner are left in the queue (no learner runs).

    python bench/rollback_propagation.py [--iterations 100] [--workers 2]
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import httpx  # noqa: E402
import redis  # noqa: E402
from prometheus_client.mmap_dict import MmapedDict  # noqa: E402
from snapshot_propagation import (  # noqa: E402
    KEY,
    free_port,
    logreg,
    stop_api,
    summary,
    wait_for,
    write,
)

from learners.serialization import dump_signed  # noqa: E402
from stream.registry.registry import Registry  # noqa: E402
from stream.store.snapshots import SnapshotStore  # noqa: E402


def served_versions(metrics_dir: str, model: str) -> dict[str, float]:
    """Version served by each live worker, from its multiprocess gauge file."""
    out = {}
    for path in glob.glob(os.path.join(metrics_dir, "gauge_livemin_*.db")):
        pid = path.rsplit("_", 1)[1].split(".")[0]
        for key, value, *_rest in MmapedDict.read_all_values_from_file(path):
            if '"riverstream_model_version"' in key and f'"{model}"' in key:
                out[pid] = value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rs-rollback-"))
    metrics_dir = tmp / "metrics"
    metrics_dir.mkdir()
    port = free_port()
    redis_proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    server = None
    try:
        wait_for(lambda: _ping(client), 10, "redis-server")
        store = SnapshotStore(client, "bench", KEY)
        registry = Registry(store, by="bench", signing_key=KEY)
        blob = dump_signed(logreg(), KEY)
        versions = [write(store, "lr", blob)[0] for _ in range(3)]
        registry.promote("lr", versions[-1], reason="bench start")
        api_port = free_port()
        env = {
            **os.environ, "RIVERSTREAM_REDIS_URL": url, "RIVERSTREAM_REDIS_PREFIX": "bench",
            "RIVERSTREAM_SNAPSHOT_KEY": KEY.decode(), "RIVERSTREAM_SERVE_PORT": str(api_port),
            "RIVERSTREAM_SERVE_WORKERS": str(args.workers),
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        }  # fmt: skip
        code = "from schemas.settings import Settings; from serving.runner import serve; serve(Settings())"
        server = subprocess.Popen(
            [sys.executable, "-c", code], cwd=ROOT, env=env, start_new_session=True
        )
        base = f"http://127.0.0.1:{api_port}"
        wait_for(lambda: _ready(base), 60, "the API")
        wait_for(
            lambda: len(served_versions(str(metrics_dir), "lr")) == args.workers
            and set(served_versions(str(metrics_dir), "lr").values()) == {versions[-1]},
            60, "every worker serving the newest version",
        )  # fmt: skip
        seconds: dict[str, list[float]] = {"back (older)": [], "forth (newer)": []}
        for i in range(args.iterations):
            target = versions[0] if i % 2 == 0 else versions[-1]
            registry.rollback("lr", to=target, reason="bench")
            started = time.perf_counter()
            while set(served_versions(str(metrics_dir), "lr").values()) != {target}:
                if time.perf_counter() - started > 30:
                    raise SystemExit(f"v{target} not served by every worker after 30 s")
                time.sleep(0.0005)
            seconds["back (older)" if i % 2 == 0 else "forth (newer)"].append(
                time.perf_counter() - started
            )
        print(f"logreg snapshot {len(blob)} bytes, {args.workers} API workers")
        for name, values in seconds.items():
            print(summary(f"rollback -> every worker, {name}", values))
        print(
            summary(
                "rollback -> every worker, all", [s for values in seconds.values() for s in values]
            )
        )
    finally:
        stop_api(server)
        client.close()
        redis_proc.terminate()
        redis_proc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)  # the workers' metric files


def _ping(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


if __name__ == "__main__":
    main()
