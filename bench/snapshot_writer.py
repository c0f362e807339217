"""A small model's snapshots written in the learning thread, or by the writer thread, side by side.

The `LearningCore` learns ``synth.Agrawal`` (label delay 100, runs of 500 events) in this
process and takes a snapshot every ``--every`` labels with a real `Snapshotter` against a real
Redis (started here), the registry's steps included (`promote_after_write`: promotion policy,
retention). Three ways, each over the same events, in one run:

  inline     ``use_fork=False``: serialized and written in the learning thread
  thread     serialized in the learning thread, written by the writer thread, with the
             interpreter's switch interval left at its 5 ms
  thread+sw  the same with the switch interval the `Snapshotter` sets while its thread writes
             (`stream.checkpoint.protocol.WRITER_SWITCH_INTERVAL`)

For each: the learning rate (samples/s, and ÷ inline), the median stall of the learning
thread per snapshot, the median time until the version is written and its registry steps done
("write"), and the writer thread's own CPU time per snapshot. ``--rtt-ms`` puts
`delay_proxy.py` between the process and Redis (a Redis on another machine).

    python bench/snapshot_writer.py                       # logreg and hoeffding, 60 000 samples
    python bench/snapshot_writer.py --models logreg --rtt-ms 0.5
"""

from __future__ import annotations

import argparse
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
from core_overhead import push_batch  # noqa: E402

from learners.core import LearningCore  # noqa: E402
from learners.datasets import dataset_events  # noqa: E402
from learners.specs import ModelSpec  # noqa: E402
from schemas.settings import Settings  # noqa: E402
from stream.checkpoint import protocol  # noqa: E402
from stream.checkpoint.protocol import SnapshotResult, Snapshotter  # noqa: E402
from stream.dev.services import ServiceManager  # noqa: E402
from stream.learner.runtime import promote_after_write  # noqa: E402
from stream.store.snapshots import SnapshotStore  # noqa: E402

KEY = b"bench"
WAYS = ("inline", "thread", "thread+sw")


class TimedSnapshotter(Snapshotter):
    """Records the writer thread's CPU time per snapshot."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.writer_cpu: list[float] = []

    def _write(self, writing: Any, prepared: Any) -> None:
        start = time.thread_time()
        super()._write(writing, prepared)
        self.writer_cpu.append(time.thread_time() - start)


def run(way: str, model: str, events: list[Any], url: str, prefix: str, every: int) -> dict:
    def store() -> SnapshotStore:
        return SnapshotStore(redis.Redis.from_url(url), prefix, KEY)

    protocol.WRITER_SWITCH_INTERVAL = 0.0005 if way == "thread+sw" else sys.getswitchinterval()
    # the first snapshot of a Snapshotter pickles its models to learn their size (kept for
    # the write): taken before the timing
    snapshotter = TimedSnapshotter(
        store(), store, KEY, use_fork=way != "inline", fork_min_bytes=10**12
    )
    snapshotter.after_write = promote_after_write(50)
    core = LearningCore([ModelSpec(model, model)])
    results: list[SnapshotResult] = []
    offsets = [0, 0]
    last = 0
    start = time.perf_counter()
    for first in range(0, len(events), 500):
        chunk = events[first : first + 500]
        push_batch(core, chunk, offsets)
        done = snapshotter.poll()
        if done is not None:
            results.append(done)
        if not snapshotter.busy and core.counters.labels_joined - last >= every:
            last = core.counters.labels_joined
            with core.processed_only():
                taken = snapshotter.take(core, {"features:0": offsets[0], "labels:0": offsets[1]})
            if taken is not None:
                results.append(taken)
    learned = time.perf_counter() - start
    done = snapshotter.poll(block=True)
    if done is not None:
        results.append(done)
    timed = [r for r in results if r.how != "fork"]
    assert all(r.ok for r in results), [r for r in results if not r.ok]
    return {
        "seconds": learned,
        "snapshots": len(results),
        "stall_ms": median_ms([r.stall_seconds for r in timed]),
        "write_ms": median_ms([r.seconds for r in timed]),
        "writer_cpu_ms": median_ms(snapshotter.writer_cpu),
    }


def median_ms(seconds: list[float]) -> float | None:
    """The median in ms, None without values: in a short run (``--samples 10000``) the first,
    forked snapshot can outlast the learning, and no snapshot is left to time."""
    return statistics.median(seconds) * 1000 if seconds else None


def ms(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="logreg,hoeffding")
    parser.add_argument("--samples", type=int, default=60_000)
    parser.add_argument("--every", type=int, default=5_000, help="labels between snapshots")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the three ways")
    parser.add_argument("--rtt-ms", type=float, default=0.0, help="round trip added to Redis")
    args = parser.parse_args(argv)
    events = list(dataset_events("synth.Agrawal", label_delay=100, limit=args.samples, seed=42))
    workdir = Path(tempfile.mkdtemp(prefix="rs-snapshot-writer-"))
    manager = ServiceManager(Settings(state_dir=workdir / "state"))
    proxy: subprocess.Popen[str] | None = None
    try:
        url = manager.up(("redis",))["redis"].url
        if args.rtt_ms:
            from learn_throughput import delayed

            proxy, url = delayed(url, args.rtt_ms)
        print(f"# {args.samples:,} samples, a snapshot every {args.every:,} labels, redis "
              f"{url} (+ {args.rtt_ms} ms a round trip)", flush=True)  # fmt: skip
        print(f"{'model':10s} {'way':10s} {'samples/s':>10s} {'÷inline':>8s} {'snaps':>6s} "
              f"{'stall':>8s} {'write':>8s} {'writer CPU':>10s}")  # fmt: skip
        for model in [m.strip() for m in args.models.split(",") if m.strip()]:
            for round_ in range(args.rounds):
                prefix = f"bench-sw-{model}-{round_}"
                rows = {
                    way: run(way, model, events, url, f"{prefix}-{way}", args.every) for way in WAYS
                }
                for way, r in rows.items():
                    print(
                        f"{model:10s} {way:10s} {args.samples / r['seconds']:>10,.0f} "
                        f"{rows['inline']['seconds'] / r['seconds']:>8.2f} {r['snapshots']:>6d} "
                        f"{ms(r['stall_ms'], 2):>8s} {ms(r['write_ms'], 1):>8s} "
                        f"{ms(r['writer_cpu_ms'], 1):>10s}",
                        flush=True,
                    )
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait(10)
        manager.down(("redis",), purge=True)
        shutil.rmtree(workdir, ignore_errors=True)  # its signing key too
    print("stall: the learning thread's time per snapshot (median); write: from the snapshot's "
          "start to its version written and the registry's steps done (median); the first "
          "snapshot of each way (its models' size unknown) is left out of both")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
