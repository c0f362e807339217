"""The registry's steps after a snapshot, against the length of the model's history.

Every auto-promotion adds an entry to the model's history, which keeps the newest 10 000
(`stream.registry.base.HISTORY_LIMIT`); retention, after every snapshot, asks for the version
promoted before the current one, which folds the whole history. This script fills a model's
history with N auto-promotion entries (as the registry writes them), then writes ``--versions``
snapshots of a logistic regression in line (`Snapshotter(use_fork=False)`, a real Redis started
here) and times the registry's steps of each (`promote_after_write`: the promotion policy,
retention, the champion/challenger policies), for N = 10, 1 000 and 10 000 by default, and
the whole snapshot (the write and those steps: ``snapshot``). ``--rtt-ms`` puts
`delay_proxy.py` between this process and Redis (a Redis on another machine).

    python bench/registry_history.py
    python bench/registry_history.py --sizes 10,10000 --versions 30 --rtt-ms 0.5
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import redis  # noqa: E402

from learners.core import LearningCore  # noqa: E402
from learners.specs import ModelSpec  # noqa: E402
from schemas.records import HistoryEntry  # noqa: E402
from schemas.settings import Settings  # noqa: E402
from stream.checkpoint.protocol import Snapshotter  # noqa: E402
from stream.dev.services import ServiceManager  # noqa: E402
from stream.learner.runtime import promote_after_write  # noqa: E402
from stream.store.keys import RedisKeys  # noqa: E402
from stream.store.snapshots import SnapshotStore  # noqa: E402

KEY = b"bench"


def history(n: int) -> list[str]:
    """``n`` auto-promotion entries, v1 → v2 … as the registry writes them."""
    now = time.time()
    entries = (
        HistoryEntry(now + i, "auto-promote", i, i + 1, "always", "bench") for i in range(1, n + 1)
    )
    return [json.dumps(e.to_dict(), sort_keys=True) for e in entries]


def run(url: str, prefix: str, size: int, versions: int) -> tuple[list[float], list[float]]:
    """Seconds of the registry's steps of each of ``versions`` snapshots, and of each whole
    snapshot."""
    client = redis.Redis.from_url(url)
    entries = history(size)
    for first in range(0, len(entries), 1000):
        client.rpush(RedisKeys(prefix).history("m"), *entries[first : first + 1000])
    store = SnapshotStore(client, prefix, KEY)
    snapshotter = Snapshotter(store, lambda: store, KEY, use_fork=False)
    steps = promote_after_write(50)
    times: list[float] = []

    def timed(*args: Any) -> None:
        start = time.perf_counter()
        steps(*args)
        times.append(time.perf_counter() - start)

    snapshotter.after_write = timed
    core = LearningCore([ModelSpec("m", "logreg")])
    whole: list[float] = []
    for i in range(versions):
        result = snapshotter.take(core, {"features:0": i})
        assert result is not None and result.ok
        whole.append(result.seconds)
    return times, whole


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,1000,10000", help="history entries before")
    parser.add_argument("--versions", type=int, default=20, help="snapshots timed per size")
    parser.add_argument("--rtt-ms", type=float, default=0.0, help="round trip added to Redis")
    args = parser.parse_args(argv)
    proxy: subprocess.Popen[str] | None = None
    workdir = Path(tempfile.mkdtemp(prefix="rs-registry-history-"))
    manager = ServiceManager(Settings(state_dir=workdir / "state"))
    try:
        url = manager.up(("redis",))["redis"].url
        if args.rtt_ms:
            from learn_throughput import delayed

            proxy, url = delayed(url, args.rtt_ms)
        print(f"# {ROOT}: registry steps of a snapshot (promotion, retention, challengers), "
              f"+ {args.rtt_ms} ms a round trip")  # fmt: skip
        print(f"{'history':>8s} {'median':>9s} {'min':>9s} {'max':>9s} {'snapshot':>9s}")
        for size in [int(s) for s in args.sizes.split(",")]:
            times, whole = run(url, f"bench-rh-{size}-{time.time_ns()}", size, args.versions)
            later = times[2:]  # the first two: the model's first versions, nothing to prune
            print(
                f"{size:>8,} {statistics.median(later) * 1000:>7.2f}ms "
                f"{min(later) * 1000:>7.2f}ms {max(later) * 1000:>7.2f}ms "
                f"{statistics.median(whole[2:]) * 1000:>7.2f}ms",
                flush=True,
            )
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait()
        manager.down(("redis",), purge=True)
        shutil.rmtree(workdir, ignore_errors=True)  # its signing key too
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
