"""Memory: an API worker's RSS, the learner's bytes per pending event, the peak of a model swap.

Three measurements, one run (a private redis-server on 127.0.0.1, stopped at the end):

1. **API worker RSS**: ``python -m stream serve`` (one worker, the logreg of
   `serve_latency.py`) after start and after 2 000 predictions, beside two references in
   fresh interpreters: ``python -c pass`` and ``import serving.app`` (the imports alone).
2. **Learner bytes per pending event**: a `LearningCore` (logreg) is given N feature events
   of ``synth.Agrawal`` (9 features) without their labels, i.e. held by the join, then N
   events beyond the watermark, i.e. buffered; the heap growth (tracemalloc) ÷ N, and the same
   for 30 numeric features.
3. **Peak during a large model's swap**: a child process runs a `SnapshotFollower` serving a
   large model (``--big-features`` features: StandardScaler | LogisticRegression, ≈ 150 B per
   feature in memory), then a second version of it is written: RSS before, the high-water
   mark while the follower loads and swaps (``VmHWM``, reset first), RSS after. The old and
   the new model are both alive until the swap: the peak is expected near old + new + blob.

    python bench/memory.py [--n 100000] [--big-features 300000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from serve_latency import KEY, publish_logreg, start_redis, wait_for  # noqa: E402

from stream.dev.services import free_port  # noqa: E402


def rss_kb(pid: int | str = "self", field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def interpreter_rss(code: str) -> int:
    """RSS (kB) of a fresh interpreter after running ``code``."""
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nfrom pathlib import Path\n"
         "print([l for l in Path('/proc/self/status').read_text().splitlines() "
         "if l.startswith('VmRSS')][0].split()[1])"],
        capture_output=True, text=True, check=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    return int(out.stdout.strip().splitlines()[-1])


def api_rss(redis_url: str) -> dict[str, int]:
    import httpx
    from serve_latency import logreg_features

    port = free_port()
    env = {
        **os.environ, "RIVERSTREAM_REDIS_URL": redis_url, "RIVERSTREAM_REDIS_PREFIX": "bench",
        "RIVERSTREAM_SNAPSHOT_KEY": KEY, "RIVERSTREAM_SERVE_PORT": str(port),
        "PYTHONPATH": str(ROOT),
    }  # fmt: skip
    server = subprocess.Popen(
        [sys.executable, "-m", "stream", "serve"], env=env, cwd=ROOT, start_new_session=True,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"{base}/readyz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, 60, "the API")
        started = rss_kb(server.pid)
        with httpx.Client(base_url=base) as client:
            for x in logreg_features():
                client.post("/v1/models/lr/predict", json={"features": x})
        after = rss_kb(server.pid)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    return {"started": started, "after_2000": after}


def pending_bytes(n: int, n_features: int | None) -> dict[str, float]:
    """Heap bytes per feature event held by the join (no label) and per buffered event."""
    from learners.core import LearningCore
    from learners.datasets import load_dataset
    from learners.specs import ModelSpec
    from schemas.events import FeatureEvent

    if n_features is None:
        rows = [x for x, _ in load_dataset("synth.Agrawal", limit=n, seed=1)]
    else:
        import random

        rng = random.Random(1)
        rows = [{f"x{i}": rng.gauss(0, 1) for i in range(n_features)} for _ in range(n)]
    events = [FeatureEvent(str(i), float(i), rows[i]) for i in range(n)]
    out: dict[str, float] = {}
    for what in ("pending", "buffered"):
        core = LearningCore([ModelSpec("lr", "logreg")])
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        core.push_features(events, (0, 0), list(range(n)))
        if what == "pending":
            core.advance(float("inf"))  # processed (predicted), waiting for their labels
        size = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        out[what] = size / n
        del core
    # the events themselves (decoded JSON as the learner holds them), for reference
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    copies = [FeatureEvent(e.id, e.time, dict(e.features)) for e in events]
    out["event"] = (tracemalloc.get_traced_memory()[0] - before) / n
    tracemalloc.stop()
    del copies
    return out


SWAP_CHILD = """
import json, sys, time
from pathlib import Path
import redis
from stream.store.follower import SnapshotFollower
from stream.store.snapshots import SnapshotStore

def rss(field):
    for line in Path('/proc/self/status').read_text().splitlines():
        if line.startswith(field + ':'):
            return int(line.split()[1])

class Quiet:
    def snapshot_swapped(self, *a): pass
    def snapshot_refused(self, *a): pass

import learners.predictor  # River, as the follower imports it to load a model
base = rss('VmRSS')
store = SnapshotStore(redis.Redis.from_url(sys.argv[1]), 'bench', sys.argv[2].encode())
follower = SnapshotFollower(store, Quiet(), models=['big'], poll_seconds=0.05, live=True)
follower.start()
while follower.get('big') is None:
    time.sleep(0.02)
first = follower.get('big').version
before = rss('VmRSS')
Path('/proc/self/clear_refs').write_text('5')  # reset VmHWM to the current RSS
print(json.dumps({'base': base, 'before': before}), flush=True)
sys.stdin.readline()  # the second version is written now
started = time.perf_counter()
while follower.get('big').version == first:
    time.sleep(0.01)
swap = time.perf_counter() - started
peak = rss('VmHWM')
import gc; gc.collect()
print(json.dumps({'peak': peak, 'after': rss('VmRSS'), 'swap_s': swap}), flush=True)
follower.stop()
"""


def swap_peak(redis_url: str, n_features: int) -> dict[str, Any]:
    import redis
    from river import linear_model, preprocessing

    from learners.serialization import dump_signed
    from stream.store.snapshots import SnapshotMeta, SnapshotStore

    store = SnapshotStore(redis.Redis.from_url(redis_url), "bench", KEY.encode())
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    x = {f"f{i}": float(i % 7) for i in range(n_features)}
    model.learn_one(x, True)
    model.learn_one({k: v + 1 for k, v in x.items()}, False)

    def write() -> int:
        blob = dump_signed(model, KEY.encode())
        meta = SnapshotMeta.describe(
            "big", blob, kind="classifier", spec="logreg", samples_learned=2, metrics={},
            offsets={},
        )  # fmt: skip
        version = store.next_version()
        store.write(version, {"big": (blob, meta)}, dump_signed({}, KEY.encode()), {})
        return len(blob)

    blob_bytes = write()
    child = subprocess.Popen(
        [sys.executable, "-c", SWAP_CHILD, redis_url, KEY], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert child.stdin is not None and child.stdout is not None
    first = json.loads(child.stdout.readline())
    write()
    child.stdin.write("go\n")
    child.stdin.flush()
    second = json.loads(child.stdout.readline())
    child.wait(timeout=60)
    return {"blob_mb": blob_bytes / 1e6, **first, **second}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="events for the per-event sizes")
    parser.add_argument("--big-features", type=int, default=300_000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rs-mem-bench-"))
    redis_proc, redis_url = start_redis(tmp)
    load = [os.getloadavg()[0]]
    try:
        publish_logreg(redis_url, "bench")
        bare = interpreter_rss("pass")
        imports = interpreter_rss("import serving.app")
        api = api_rss(redis_url)
        agrawal = pending_bytes(args.n, None)
        wide = pending_bytes(args.n // 4, 30)
        swap = swap_peak(redis_url, args.big_features)
        load.append(os.getloadavg()[0])
    finally:
        redis_proc.terminate()
        redis_proc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)
    mb = 1 / 1024
    print("1. API worker RSS (MB)")
    print(f"   python -c pass {bare * mb:.1f}; import serving.app {imports * mb:.1f}; "
          f"API worker serving logreg: started {api['started'] * mb:.1f}, after 2 000 "
          f"predictions {api['after_2000'] * mb:.1f}")  # fmt: skip
    print("2. learner heap bytes per pending event (tracemalloc; logreg core): the decoded event "
          "+ the core's bookkeeping")  # fmt: skip
    for name, r in (("Agrawal, 9 features", agrawal), ("30 numeric features", wide)):
        e = r["event"]
        print(f"   {name}: decoded event {e:.0f} B; held by the join (predicted, waiting for its "
              f"label) +{r['pending']:.0f} = {e + r['pending']:.0f} B; buffered (beyond the "
              f"watermark) +{r['buffered']:.0f} = {e + r['buffered']:.0f} B")  # fmt: skip
    print(
        f"3. swap of a large model ({args.big_features:,} features, blob "
        f"{swap['blob_mb']:.1f} MB) in a follower process (MB)"
    )
    print(f"   the model in memory ≈ {(swap['before'] - swap['base']) * mb:.0f} MB (RSS serving it − "
          f"RSS before loading it); RSS serving the old version {swap['before'] * mb:.1f}; peak "
          "while loading and "
          f"swapping {swap['peak'] * mb:.1f} (+{(swap['peak'] - swap['before']) * mb:.1f}); "
          f"after the swap {swap['after'] * mb:.1f}; swap took {swap['swap_s']:.2f} s")  # fmt: skip
    print(f"load average (1 min) before, after: {load[0]:.1f}, {load[-1]:.1f}")


if __name__ == "__main__":
    main()
