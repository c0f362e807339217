"""How long does snapshotting a large ARF stall learning? And write → notification latency.

1. Grow ``arf`` (``forest.ARFClassifier(seed=42)``) inside a `LearningCore`, fed feature and
   label events (label delay ``--delay``) and advanced every ``--loop-batch`` events, until
   ``len(pickle.dumps(core.models["arf"]))`` ≥ ``--target-mb`` (checked every
   ``--check-every`` samples; capped by ``--grow-seconds``, the size reached is reported).
   ``synth.Agrawal`` is tried first for ``--probe-seconds``; an ARF on it stays small (its drift
   detectors keep resetting trees), so unless it reached the target the run switches to
   ``synth.Hyperplane(n_features=30)`` (printed).
2. Against a real Redis (`ServiceManager`, temporary state dir, stopped and purged at the end),
   with the learner's own `stream.checkpoint.protocol.Snapshotter`:
   (a) fork: the time `Snapshotter.take` blocks the caller (next version + ``fork()``),
       ``--repeat`` times, and the child's total time until it is reaped
       (`Snapshotter.poll(block=True)`: serialize, sign, write chunks, MULTI/EXEC, PUBLISH);
   (b) in-process (``use_fork=False``): the whole snapshot on the learning path;
   plus the blob size and chunk count (``snapshot_chunk_bytes`` default 64 MiB).
3. A learning loop that keeps pushing events and calling ``advance`` while one forked snapshot
   runs: the longest time between two ``advance`` calls (the iteration that calls ``take``, and
   every iteration while the child copies-on-write) against the median iteration before it.
4. ``logreg``: snapshot write → notification received by a subscriber (`SnapshotStore.subscribe`,
   ``.get(timeout)`` in a thread), p50/p99 over ``--notify-samples`` snapshots, in-process
   and forked.

    python bench/snapshot_stall.py                   # ≥ 50 MB ARF, 5 fork repeats, 200 notifications
    python bench/snapshot_stall.py --target-mb 10 --notify-samples 50
"""

from __future__ import annotations

import argparse
import gc
import heapq
import pickle
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pydantic import SecretStr  # noqa: E402
from river.datasets import synth  # noqa: E402

from learners.core import LearningCore  # noqa: E402
from learners.specs import ModelSpec  # noqa: E402
from schemas.events import FeatureEvent, LabelEvent  # noqa: E402
from schemas.settings import Settings  # noqa: E402
from stream.checkpoint.protocol import Snapshotter  # noqa: E402
from stream.dev.services import ServiceManager  # noqa: E402
from stream.learner.runtime import snapshot_store  # noqa: E402

GENERATORS = {
    "synth.Agrawal": lambda: synth.Agrawal(seed=42),
    "synth.Hyperplane(n_features=30)": lambda: synth.Hyperplane(seed=42, n_features=30),
}


def events(generator: Any, delay: int) -> Iterator[FeatureEvent | LabelEvent]:
    """Like `learners.datasets.dataset_events` with a constant delay, for any generator."""
    waiting: list[tuple[int, int, Any]] = []
    for i, (x, y) in enumerate(generator):
        while waiting and waiting[0][0] <= i:
            t, j, label = heapq.heappop(waiting)
            yield LabelEvent(str(j), float(t), label)
        yield FeatureEvent(str(i), float(i), {str(k): v for k, v in x.items()})
        heapq.heappush(waiting, (i + delay, i, y))


class Feeder:
    """Pushes events into a core from one partition per topic and advances it."""

    def __init__(self, core: LearningCore, stream: Iterator[FeatureEvent | LabelEvent]) -> None:
        self.core = core
        self.stream = stream
        self.offsets = [0, 0]
        self.last_time = 0.0

    def step(self, n_events: int) -> None:
        core, offsets = self.core, self.offsets
        for _ in range(n_events):
            event = next(self.stream)
            if event.__class__ is FeatureEvent:
                core.push_feature(event, (0, 0), offsets[0])
                offsets[0] += 1
            else:
                core.push_label(event, (1, 0), offsets[1])  # type: ignore[arg-type]
                offsets[1] += 1
            self.last_time = event.time
        core.advance(self.last_time)

    def kafka_offsets(self) -> dict[str, int]:
        return {"bench.features:0": self.offsets[0], "bench.labels:0": self.offsets[1]}


def model_mb(core: LearningCore) -> float:
    return len(pickle.dumps(core.models["arf"])) / 1e6


def grow(
    name: str, target_mb: float, seconds: float, check_every: int, delay: int, batch: int
) -> tuple[LearningCore, Feeder, float, bool, float]:
    """Grow an ARF on ``name`` until its pickle ≥ target or ``seconds`` pass."""
    core = LearningCore([ModelSpec("arf", "arf")])
    feeder = Feeder(core, events(GENERATORS[name](), delay))
    start = time.perf_counter()
    size, next_check = 0.0, check_every
    print(f"# growing arf on {name} (target {target_mb:.0f} MB, cap {seconds:.0f} s)", flush=True)
    while True:
        feeder.step(batch)
        learned = core.models["arf"].samples_learned
        if learned >= next_check:
            next_check += check_every
            size = model_mb(core)
            elapsed = time.perf_counter() - start
            print(f"    {learned:>7,} samples  {elapsed:6.1f} s  pickle {size:6.1f} MB", flush=True)
            if size >= target_mb:
                return core, feeder, size, True, elapsed
            if elapsed >= seconds:
                return core, feeder, size, False, elapsed


def ms(seconds: float) -> str:
    return f"{seconds * 1000:9.1f} ms"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def fork_stalls(
    snapshotter: Snapshotter, core: LearningCore, feeder: Feeder, repeat: int, batch: int
) -> list[tuple[float, float, float, int]]:
    """(take() wall time, fork stall as recorded, child total, version) per forked snapshot."""
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        assert snapshotter.take(core, feeder.kafka_offsets()) is None
        taken = time.perf_counter() - start
        result = snapshotter.poll(block=True)
        assert result is not None and result.ok, "forked snapshot failed"
        out.append((taken, result.stall_seconds, result.seconds, result.version))
        print(f"    fork: take() {ms(taken)}, child total {result.seconds:6.2f} s", flush=True)
        feeder.step(batch)  # learn a little between snapshots
    return out


def concurrent_loop(
    snapshotter: Snapshotter, feeder: Feeder, batch: int, before: int, after_s: float
) -> dict[str, Any]:
    """Learn in iterations of ``batch`` events; one forked snapshot starts after ``before``
    iterations; go on until the child is reaped plus ``after_s`` seconds."""
    times_before: list[float] = []
    during: list[float] = []
    after: list[float] = []
    take_iteration = 0.0
    phase = "before"
    done_at: float | None = None
    child_total = 0.0
    last = time.perf_counter()
    i = 0
    while True:
        i += 1
        if i == before + 1:
            assert snapshotter.take(feeder.core, feeder.kafka_offsets()) is None
            phase = "take"
        feeder.step(batch)  # push + advance
        if phase == "during" and done_at is None:
            result = snapshotter.poll()
            if result is not None:
                assert result.ok, "forked snapshot failed"
                child_total = result.seconds
                done_at = time.perf_counter()
        now = time.perf_counter()
        gap = now - last
        last = now
        if phase == "before":
            times_before.append(gap)
        elif phase == "take":
            take_iteration = gap
            phase = "during"
        elif done_at is None or now <= done_at:
            during.append(gap)
        else:
            after.append(gap)
            if now - done_at >= after_s:
                break
    return {
        "median_before": statistics.median(times_before),
        "max_before": max(times_before),
        "take_iteration": take_iteration,
        "median_during": statistics.median(during) if during else 0.0,
        "max_during": max(during) if during else 0.0,
        "n_during": len(during),
        "median_after": statistics.median(after) if after else 0.0,
        "max_after": max(after) if after else 0.0,
        "child_total": child_total,
    }


def notification_latency(
    settings: Settings, n: int, use_fork: bool
) -> tuple[list[float], list[float]]:
    """(write start → notification received, take() duration) for ``n`` logreg snapshots."""
    prefix = f"{settings.redis_prefix}-notify-{'fork' if use_fork else 'inproc'}"
    settings = settings.model_copy(update={"redis_prefix": prefix})
    store = snapshot_store(settings)
    snapshotter = Snapshotter(
        store, lambda: snapshot_store(settings), settings.require_snapshot_key(), use_fork=use_fork
    )
    core = LearningCore([ModelSpec("logreg", "logreg")])
    feeder = Feeder(core, events(synth.Agrawal(seed=42), 100))
    feeder.step(2_000)
    received: list[float] = []
    got = threading.Event()
    stop = threading.Event()
    sub = store.subscribe()

    def listen() -> None:
        while not stop.is_set():
            note = sub.get(timeout=0.05)
            if note is not None and note.model == "logreg":
                received.append(time.perf_counter())
                got.set()

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    time.sleep(0.3)  # let the subscription settle
    latencies, takes = [], []
    try:
        for _ in range(n):
            got.clear()
            count = len(received)
            start = time.perf_counter()
            snapshotter.take(core, feeder.kafka_offsets())
            takes.append(time.perf_counter() - start)
            if use_fork:
                result = snapshotter.poll(block=True)
                assert result is not None and result.ok
            if not got.wait(10):
                raise SystemExit("no notification within 10 s")
            latencies.append(received[count] - start)
            feeder.step(20)
    finally:
        stop.set()
        thread.join()
        sub.close()
    return latencies, takes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target-mb", type=float, default=50.0)
    parser.add_argument("--grow-seconds", type=float, default=360.0, help="cap on growing")
    parser.add_argument("--probe-seconds", type=float, default=45.0, help="Agrawal first")
    parser.add_argument("--check-every", type=int, default=3_000, help="samples between sizes")
    parser.add_argument("--delay", type=int, default=100)
    parser.add_argument("--grow-batch", type=int, default=500, help="events per advance (grow)")
    parser.add_argument("--loop-batch", type=int, default=20, help="events per advance (loop)")
    parser.add_argument("--repeat", type=int, default=5, help="forked snapshots measured")
    parser.add_argument("--notify-samples", type=int, default=200)
    args = parser.parse_args(argv)

    # 1. grow (no services needed yet)
    t0 = time.perf_counter()
    name = "synth.Agrawal"
    core, feeder, size, reached, elapsed = grow(
        name, args.target_mb, args.probe_seconds, args.check_every, args.delay, args.grow_batch
    )
    if not reached:
        print(
            f"# {name}: {size:.1f} MB after {core.models['arf'].samples_learned:,} samples in "
            f"{elapsed:.0f} s: too slow, switching to synth.Hyperplane(n_features=30)",
            flush=True,
        )
        name = "synth.Hyperplane(n_features=30)"
        remaining = max(30.0, args.grow_seconds - (time.perf_counter() - t0))
        core, feeder, size, reached, elapsed = grow(
            name, args.target_mb, remaining, args.check_every, args.delay, args.grow_batch
        )
    samples = core.models["arf"].samples_learned
    print(
        f"# arf on {name}: {samples:,} samples, pickle {size:.1f} MB "
        f"({'target reached' if reached else f'CAP HIT: target {args.target_mb:.0f} MB not reached'})"
        f" in {elapsed:.0f} s",
        flush=True,
    )

    workdir = Path(tempfile.mkdtemp(prefix="rs-stall-bench-"))
    manager = ServiceManager(Settings(state_dir=workdir / "state"))
    try:
        rec = manager.up(("redis",))["redis"]
        settings = Settings(
            state_dir=workdir / "state",
            redis_url=rec.url,
            snapshot_key=SecretStr("bench"),
            redis_prefix=f"bench-stall-{uuid.uuid4().hex[:6]}",
        )
        print(f"# redis at {rec.url}", flush=True)
        store = snapshot_store(settings)
        key = settings.require_snapshot_key()
        forked = Snapshotter(store, lambda: snapshot_store(settings), key, use_fork=True)
        inproc = Snapshotter(store, lambda: snapshot_store(settings), key, use_fork=False)

        # 2a. fork stall
        print(f"# (a) {args.repeat} forked snapshots", flush=True)
        forks = fork_stalls(forked, core, feeder, args.repeat, args.grow_batch)
        meta = store.meta("arf", forks[-1][3])
        _, cp_blob, _ = store.checkpoint(forks[-1][3])
        cp_chunks = -(-len(cp_blob) // settings.snapshot_chunk_bytes)
        # 2b. in-process
        print("# (b) in-process snapshot", flush=True)
        start = time.perf_counter()
        result = inproc.take(core, feeder.kafka_offsets())
        inproc_s = time.perf_counter() - start
        assert result is not None and result.ok
        # 3. learning loop with a concurrent forked snapshot
        print("# learning loop with one forked snapshot running", flush=True)
        loop = concurrent_loop(forked, feeder, args.loop_batch, before=50, after_s=2.0)
        # 4. notifications (drop the big ARF first: fork time grows with the process size)
        del core, feeder, forked, inproc
        gc.collect()
        print(f"# logreg notifications ({args.notify_samples} per mode)", flush=True)
        note_inproc, take_inproc = notification_latency(settings, args.notify_samples, False)
        note_fork, take_fork = notification_latency(settings, args.notify_samples, True)
    finally:
        manager.down(("redis",), purge=True)
        shutil.rmtree(workdir, ignore_errors=True)

    takes = [f[0] for f in forks]
    print()
    print(f"ARF snapshot on {name}: {samples:,} samples learned, pickle of the model state "
          f"{size:.1f} MB" + ("" if reached else f" (cap hit before {args.target_mb:.0f} MB)"))  # fmt: skip
    print(f"  signed blob (zlib level 1) {meta.size / 1e6:.1f} MB in {meta.chunks} chunk(s) of "
          f"≤ {settings.snapshot_chunk_bytes // 2**20} MiB; checkpoint blob "
          f"{len(cp_blob) / 1e3:.1f} kB in {cp_chunks} chunk(s)")  # fmt: skip
    print()
    print(f"{'snapshot':44s} {'n':>3s} {'median':>12s} {'max':>12s}")
    print("-" * 74)
    rows = [
        ("(a) fork: stall of take() in the learner", takes),
        ("(a) fork: stall as recorded (fork only)", [f[1] for f in forks]),
        ("(a) fork: child total (serialize+sign+write)", [f[2] for f in forks]),
        ("(b) in-process (use_fork=False): stall", [inproc_s]),
    ]
    for label, values in rows:
        print(f"{label:44s} {len(values):>3d} {ms(statistics.median(values))} {ms(max(values))}")
    print(f"  max fork stall {max(takes) * 1000:.1f} ms (target ≤ 100 ms: "
          f"{'met' if max(takes) <= 0.1 else 'NOT met'}); in-process is "
          f"{inproc_s / max(takes):,.0f}× the max fork stall")  # fmt: skip
    print()
    print(f"learning loop ({args.loop_batch} events per advance) with one forked snapshot "
          f"(child {loop['child_total']:.2f} s):")  # fmt: skip
    print(f"  median gap between advance calls before   {ms(loop['median_before'])}   "
          f"max {ms(loop['max_before'])}")  # fmt: skip
    print(
        f"  the iteration that calls take()           {ms(loop['take_iteration'])}   "
        f"(+{(loop['take_iteration'] - loop['median_before']) * 1000:.1f} ms over median)"
    )
    print(f"  while the child runs ({loop['n_during']:>4d} iterations)    "
          f"{ms(loop['median_during'])}   max {ms(loop['max_during'])}")  # fmt: skip
    print(f"  after it was reaped                       {ms(loop['median_after'])}   "
          f"max {ms(loop['max_after'])}")  # fmt: skip
    longest = max(loop["take_iteration"], loop["max_during"])
    print(f"  longest gap while snapshotting {longest * 1000:.1f} ms vs median "
          f"{loop['median_before'] * 1000:.1f} ms → stall ≈ "
          f"{(longest - loop['median_before']) * 1000:.1f} ms")  # fmt: skip
    print()
    print("logreg: snapshot write → notification received by a subscriber")
    print(f"{'mode':30s} {'n':>4s} {'p50':>12s} {'p99':>12s} {'max':>12s}  take() p50")
    for label, lat, tk in (
        ("in-process (write on the path)", note_inproc, take_inproc),
        ("forked (write in the child)", note_fork, take_fork),
    ):
        print(f"{label:30s} {len(lat):>4d} {ms(percentile(lat, 0.5))} {ms(percentile(lat, 0.99))} "
              f"{ms(max(lat))}  {ms(percentile(tk, 0.5))}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
