"""A snapshot that fails for a reason that is no outage (here the registry's steps after the
write meet a key of the wrong type: every attempt fails the same way) is retried with a
backoff, not at every pass of the loop: each attempt writes a whole version first, so
retrying at once piled versions up in Redis at the loop's pace. Once the cause is gone, the
next attempt succeeds and the learner goes on; it never stops meanwhile.

Real servers: a learner process on the suite's Kafka and a private redis-server.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from learners.datasets import dataset_events
from schemas.settings import Settings
from stream.learner.runtime import snapshot_store
from tests.support.outage import PrivateRedis, private_redis
from tests.support.pipeline import fast, publish, spawn_cli
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]
__all__ = ["private_redis"]  # a fixture

WATCHED = 4.0
"""Seconds the failing snapshots are counted over."""


def test_a_snapshot_that_keeps_failing_is_retried_with_a_backoff(
    settings: Settings, private_redis: PrivateRedis, tmp_path: Path
) -> None:
    s = fast(
        settings, redis_url=private_redis.url, snapshot_every_labels=100,
        snapshot_every_seconds=0.2,
    )  # fmt: skip
    events = list(dataset_events("synth.Agrawal", label_delay=20, limit=2000, seed=5))
    store, log = snapshot_store(s), tmp_path / "learner.log"
    half = len(events) // 2
    publish(s, events[:half])
    learner = spawn_cli(s, ["learn", "--model", "lr=logreg"], log)
    client = redis.Redis.from_url(private_redis.url)
    history = store.keys.history("lr")
    try:
        wait_until(lambda: len(store.versions("lr")) >= 1, 60, "a first version", log=log)
        client.delete(history)
        client.set(history, "not a list")  # the registry's next step meets WRONGTYPE
        publish(s, events[half:])  # labels to snapshot
        failing = len(store.versions("lr"))
        wait_until(lambda: "WRONGTYPE" in log.read_text(), 30, "a failing snapshot", log=log)
        started = time.monotonic()
        wait_until(lambda: time.monotonic() - started >= WATCHED, WATCHED + 5, "the count")
        written = len(store.versions("lr")) - failing
        assert learner.poll() is None, log.read_text()[-3000:]
        # Backoff 0.5, 1, 2 s...: a handful of attempts, not one per loop pass (hundreds).
        assert written <= 6, f"{written} versions written in {WATCHED} s of failing snapshots"
        client.delete(history)  # the cause is gone: the next attempt succeeds
        before = max(store.versions("lr"))
        wait_until(lambda: store.latest_version("lr") not in (None, before), 30, "a new version")
        wait_until(
            lambda: client.llen(history) > 0, 30, "the registry's steps to run again", log=log
        )
        assert learner.poll() is None, log.read_text()[-3000:]
    finally:
        if learner.poll() is None:
            learner.kill()
            learner.wait(timeout=10)
