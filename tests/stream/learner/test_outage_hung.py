"""A hung Redis (stopped with SIGSTOP, as behind a network black hole: calls wait, nothing
refuses them) does not stall learning: the learning thread's calls to Redis wait 0.5 s at most
(`stream.learner.runtime`), and during the outage it only PINGs Redis at each backoff's expiry
(`stream.learner.outage.Outage.due`), not the store's 10 s calls it used to make.

Real servers: a learner process reads a real Kafka and writes to a private redis-server, which
is stopped for nine seconds while events keep arriving. The learner's ``samples_learned``
counter (its metrics endpoint, refreshed by the learning thread) must advance all through the
hang, never still for more than a few seconds; once Redis goes on, the next version holds every
sample, once.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from learners.datasets import dataset_events
from learners.serialization import load_signed
from schemas.settings import Settings
from stream.dev.services import free_port
from stream.kafka.publish import Publisher
from stream.learner.runtime import snapshot_store
from stream.store.snapshots import SnapshotStore
from tests.support.cluster import learned
from tests.support.outage import (
    PrivateRedis,
    checkpoint_version,
    learner_gauges,
    private_redis,
)
from tests.support.pipeline import fast, final_core, final_model, publish, spawn_cli
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]
__all__ = ["private_redis"]  # a fixture

N, FIRST, DELAY, SEED = 4_000, 500, 50, 3
RATE = 500.0
"""Events per second of the steady stream (two per sample)."""
HUNG_SECONDS = 9.0
"""How long Redis is stopped: shorter than the store's 10 s socket timeout, so that a learning
thread waiting on one call learns nothing at all meanwhile."""
LONGEST_STILL = 3.0
"""Seconds the learned count may stay still during the hang (the metrics refresh every 0.5 s)."""


def _labels_in(store: SnapshotStore, key: bytes) -> int:
    """Labels joined in the latest checkpoint (0 if there is none yet)."""
    try:
        latest = store.latest_checkpoint()
    except Exception:
        return 0
    return 0 if latest is None else load_signed(latest[1], key)["core"].counters.labels_joined


def test_learning_goes_on_while_redis_hangs(
    settings: Settings, private_redis: PrivateRedis, tmp_path: Path
) -> None:
    port = free_port()
    s = fast(
        settings, redis_url=private_redis.url, learner_metrics_port=port,
        snapshot_every_labels=200, snapshot_every_seconds=0.5, redis_outage_seconds=120,
    )  # fmt: skip
    events = list(dataset_events("synth.Agrawal", label_delay=DELAY, limit=N, seed=SEED))
    store, log, key = snapshot_store(s), tmp_path / "learner.log", s.require_snapshot_key()
    publish(s, events[: 2 * FIRST])
    publisher = Publisher(s)
    steady = threading.Thread(
        target=publisher.publish_events, args=(events[2 * FIRST :],), kwargs={"rate": RATE}
    )
    seen: list[tuple[float, float]] = []  # (time, samples learned) during the hang
    learner = spawn_cli(s, ["learn", "--model", "lr=logreg", "--metric", "Accuracy"], log)
    try:
        wait_until(lambda: checkpoint_version(store), 60, "the first snapshot", log=log)
        steady.start()  # ≈ 14 s of events, one every 2 ms
        start = learned(port)
        wait_until(lambda: learned(port) >= start + 200, 30, "learning of the stream", log=log)
        before = checkpoint_version(store)
        private_redis.freeze()
        try:
            hung = time.monotonic()
            while (now := time.monotonic()) - hung < HUNG_SECONDS:
                count = learner_gauges(port).get("riverstream_samples_learned_total")
                if count is not None:  # a scrape that failed says nothing
                    seen.append((now - hung, count))
                wait_until(lambda: time.monotonic() - now >= 0.1, 1, "the next sample")
            assert learner.poll() is None, log.read_text()[-3000:]
        finally:
            private_redis.kill(signal.SIGCONT)
        steady.join(timeout=60)
        assert not steady.is_alive()
        wait_until(lambda: learned(port) >= N, 60, "every sample to be learned", log=log)
        wait_until(lambda: _labels_in(store, key) == N, 30, "a version of every sample", log=log)
        after = checkpoint_version(store)
        assert learner.poll() is None, log.read_text()[-3000:]
        os.kill(learner.pid, signal.SIGTERM)
        assert learner.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        private_redis.kill(signal.SIGCONT)
        if steady.is_alive():
            steady.join(timeout=60)
        publisher.close()
        _stop(learner)

    # Learning went on through the hang: the count rose, and never stood still for long.
    still, rose = 0.0, 0.0
    for (_, before_n), (t, n) in itertools.pairwise(seen):
        if n > before_n:
            rose = t
        still = max(still, t - rose)
    during = seen[-1][1] - seen[0][1]
    published = HUNG_SECONDS * RATE / 2
    assert still < LONGEST_STILL, f"learning stood still {still:.1f} s of a {HUNG_SECONDS} s hang"
    assert during >= published / 2, f"{during:.0f} samples learned during the hang, of {published}"
    text = log.read_text()
    assert "Redis unreachable" in text and "Redis is back after an outage of" in text
    # Versions continue after the hang, and the one written after it holds every sample once.
    assert after > before
    assert final_model(s, "lr").samples_learned == N
    assert final_core(s).counters.labels_joined == N


def _stop(learner: subprocess.Popen[bytes]) -> None:
    if learner.poll() is None:
        learner.kill()
        learner.wait(timeout=10)
