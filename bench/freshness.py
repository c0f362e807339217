"""Freshness: how far behind the published stream the served model is, versions only vs live.

Staleness at a poll is the age of the oldest published label that the served state has not
learned: with ``S`` the ``samples_learned`` the API answers with, ``t`` the poll's time and
``T[k]`` the time the k-th label was handed to the producer, staleness = ``t − T[S]`` (0 when
``S`` covers every label published). It counts the producer's linger, Kafka, the learner's
event-time merge and join, the publication (a version, or a live update) and the API's load.

One run, side by side, each mode on fresh topics and a fresh Redis prefix, default settings
but for the mode:

  versions  ``RIVERSTREAM_LIVE_EVERY_SECONDS=0``: serving follows the versions only (every
            10 000 labels or 30 s): the behaviour before live updates
  live      the defaults: live updates between versions (`stream.store.live`)

Per mode: Kafka and Redis (`ServiceManager`, a temporary state directory, stopped and purged at
the end), a learner process (this script with ``--learner-child``: `build_learner` with the
default settings, which prints what live updates cost when it stops) and the API (``python -m
stream serve``, default one worker). A thread replays ``synth.Agrawal`` (label delay
``--delay``) at ``--rate`` samples/s (two events each); the main thread polls
``GET /v1/models/{name}`` every ``--poll`` s for ``--duration`` s once the first version is
served (plus ``--warmup`` s). Printed: staleness p50 / p90 / p99 / max, versions written,
live updates written, the share of the learner's wall-clock and CPU time they took, and the
load average.

    python bench/freshness.py                                   # logreg, 870 samples/s, 60 s/mode
    python bench/freshness.py --model hoeffding --duration 40   # a larger model
    python bench/freshness.py --model arf --rate 150 --modes live   # ≥ 1 MB: versions only
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
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pydantic import SecretStr  # noqa: E402

from schemas.settings import Settings  # noqa: E402

DATASET = "synth.Agrawal"


def learner_child(model: str) -> None:
    """The learner process: default settings from the environment, until SIGTERM; then one
    JSON line with what live updates cost."""
    from learners.specs import ModelSpec
    from stream.learner.runtime import build_learner

    settings = Settings()
    learner = build_learner(settings, [ModelSpec(model, model)])
    signal.signal(signal.SIGTERM, lambda *_: learner.stop())
    started = time.perf_counter()
    cpu_started = time.process_time()
    learner.run()
    wall = time.perf_counter() - started
    stats = learner.live.stats
    print(
        json.dumps(
            {
                "wall_s": wall,
                "cpu_s": time.process_time() - cpu_started,
                "live_published": stats.published,
                "live_refused": stats.refused,
                "live_rounds": stats.rounds,
                "live_s": stats.seconds,
                "live_cpu_s": stats.cpu_seconds,
                "live_bytes": learner.live.sizes.get(model),
                "versions": learner.stats.snapshots,
            }
        ),
        flush=True,
    )


class Replay(threading.Thread):
    """Publishes the dataset at a steady rate; ``label_times[k]``: when label k was sent."""

    def __init__(self, settings: Settings, rate: float, delay: int, limit: int) -> None:
        super().__init__(name="replay", daemon=True)
        from learners.datasets import dataset_events

        self.settings = settings
        self.rate = rate
        self.events = list(dataset_events(DATASET, label_delay=delay, limit=limit, seed=42))
        self.label_times: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        from schemas.events import LabelEvent
        from stream.kafka.publish import Publisher

        publisher = Publisher(self.settings)
        start = time.perf_counter()
        try:
            for n, event in enumerate(self.events, start=1):
                if self.stop.is_set():
                    break
                publisher.send_event(event)
                if isinstance(event, LabelEvent):
                    self.label_times.append(time.perf_counter())
                ahead = n / (2 * self.rate) - (time.perf_counter() - start)
                if ahead > 0.002:
                    time.sleep(ahead)  # pacing the replay, not synchronisation
        finally:
            publisher.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_mode(base: Settings, mode: str, args: argparse.Namespace, run_id: str) -> dict[str, Any]:
    import httpx
    import redis

    from stream.dev.ports import free_port

    tag = f"{run_id}-{mode}"
    port = free_port()
    settings = base.model_copy(
        update={
            "topic_features": f"bench.fresh.{tag}.features",
            "topic_labels": f"bench.fresh.{tag}.labels",
            "topic_dlq": f"bench.fresh.{tag}.dlq",
            "redis_prefix": f"bench-fresh-{tag}",
            "serve_port": port,
            "live_every_seconds": 0.0 if mode == "versions" else base.live_every_seconds,
        }
    )
    env = {**os.environ, **settings.to_environment(), "PYTHONPATH": str(ROOT)}
    replay = Replay(settings, args.rate, args.delay, int(args.rate * (args.duration + 120)))
    from stream.kafka.client import create_topics

    create_topics(settings.kafka_bootstrap_servers or "", settings.topics())
    learner = subprocess.Popen(
        [sys.executable, __file__, "--learner-child", args.model], env=env,
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    api = subprocess.Popen(
        [sys.executable, "-m", "stream", "serve"], env=env, stdout=subprocess.DEVNULL
    )
    lags: list[float] = []
    live_polls = 0
    try:
        replay.start()
        url = f"http://127.0.0.1:{port}/v1/models/{args.model}"
        with httpx.Client(timeout=5) as client:

            def served() -> dict[str, Any] | None:
                try:
                    response = client.get(url)
                except httpx.TransportError:
                    return None
                return response.json() if response.status_code == 200 else None

            deadline = time.monotonic() + 120
            while served() is None:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{mode}: no version served within 120 s")
                time.sleep(0.1)
            time.sleep(args.warmup)  # let the stream settle
            end = time.perf_counter() + args.duration
            while time.perf_counter() < end:
                info = served()
                now = time.perf_counter()
                if info is not None:
                    learned = info["samples_learned"]
                    times = replay.label_times
                    lags.append(now - times[learned] if learned < len(times) else 0.0)
                    live_polls += bool(info.get("live"))
                time.sleep(args.poll)  # the polling interval of the measurement
        versions = len(redis.Redis.from_url(settings.redis_url or "").zrange(
            f"{settings.redis_prefix}:model:{args.model}:versions", 0, -1
        ))  # fmt: skip
    finally:
        replay.stop.set()
        api.send_signal(signal.SIGTERM)
        learner.send_signal(signal.SIGTERM)
        api.wait(timeout=30)
        out, _ = learner.communicate(timeout=120)
        replay.join(timeout=10)
    costs = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    return {
        "mode": mode, "polls": len(lags), "live_polls": live_polls,
        "p50": percentile(lags, 0.50), "p90": percentile(lags, 0.90),
        "p99": percentile(lags, 0.99), "max": max(lags), "versions": versions, **costs,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--learner-child", metavar="MODEL", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="logreg", help="preset (also the model's name)")
    parser.add_argument("--rate", type=float, default=870.0, help="samples per second")
    parser.add_argument("--delay", type=int, default=50, help="label delay (events)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds measured per mode")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--poll", type=float, default=0.05, help="seconds between polls")
    parser.add_argument("--modes", default="versions,live")
    args = parser.parse_args()
    if args.learner_child:
        learner_child(args.learner_child)
        return

    from stream.dev.services import ServiceManager

    workdir = Path(tempfile.mkdtemp(prefix="rs-fresh-bench-"))
    manager = ServiceManager(Settings(state_dir=workdir / "state"))
    run_id = uuid.uuid4().hex[:6]
    rows = []
    loads = [os.getloadavg()[0]]
    try:
        records = manager.up(("kafka", "redis"))
        base = Settings(
            state_dir=workdir / "state",
            kafka_bootstrap_servers=records["kafka"].address,
            redis_url=records["redis"].url,
            snapshot_key=SecretStr("bench"),
            learner_metrics_port=0,
        )
        print(
            f"# {DATASET}, {args.model}, {args.rate:g} samples/s, label delay {args.delay}, "
            f"{args.duration:g} s per mode, polls every {args.poll:g} s; versions every "
            f"{base.snapshot_every_labels} labels or {base.snapshot_every_seconds:g} s; live "
            f"every {base.live_every_seconds:g} s under {base.live_max_bytes:,} B, at most "
            f"{base.live_max_share:.0%} of the learner",
            flush=True,
        )
        for mode in args.modes.split(","):
            rows.append(run_mode(base, mode, args, run_id))
            loads.append(os.getloadavg()[0])
            print(f"# {mode} done: {rows[-1]}", flush=True)
    finally:
        manager.down(("kafka", "redis"), purge=True)
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(f"staleness of the served {args.model} (s): age of the oldest label it has not learned")
    print(
        f"{'mode':9s} {'polls':>6s} {'p50':>7s} {'p90':>7s} {'p99':>7s} {'max':>7s} "
        f"{'versions':>8s} {'live upd.':>9s} {'wall %':>7s} {'CPU %':>6s} {'blob':>9s}"
    )
    for r in rows:
        share = r.get("live_s", 0.0) / r["wall_s"] if r.get("wall_s") else 0.0
        cpu = r.get("live_cpu_s", 0.0) / r["cpu_s"] if r.get("cpu_s") else 0.0
        blob = r.get("live_bytes")
        print(
            f"{r['mode']:9s} {r['polls']:>6d} {r['p50']:>7.3f} {r['p90']:>7.3f} {r['p99']:>7.3f} "
            f"{r['max']:>7.3f} {r['versions']:>8d} {r.get('live_published', 0):>9d} "
            f"{share:>7.2%} {cpu:>6.2%} {'' if blob is None else f'{blob:,}':>9s}"
        )
    if len(rows) == 2 and rows[1]["p99"] > 0:
        print(f"p99 versions ÷ live: {rows[0]['p99'] / rows[1]['p99']:.1f}×")
    print(f"load average (1 min) during the run: {', '.join(f'{x:.1f}' for x in loads)}")


if __name__ == "__main__":
    main()
