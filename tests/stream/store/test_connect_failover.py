"""Redis with a replica and Sentinels under a running learner and API: kill -9 the primary.

Debian's redis-server (a primary and its replica) and redis-sentinel (three, quorum 2) are
started for this test (`stream.dev.cluster.RedisHA`). The learner and the API (two workers)
find Redis through the Sentinels only; the API reads from the replica, and its polling is off
(60 s), so every version it picks up came through a notification: the replica relays what the
learner publishes on the primary. Mid-stream the primary is killed with -9: the Sentinels
promote the replica, the learner rides out the seconds without a primary and goes on writing
to the new one, the API goes on answering (never a 5xx) and serves the versions written after
the failover, and the final model equals River's ``progressive_val_score`` (nothing learned
twice, nothing skipped).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from learners.datasets import dataset_events
from schemas.settings import Settings
from stream.dev.cluster import RedisHA
from stream.dev.services import free_port
from stream.learner.runtime import snapshot_store
from stream.store.keys import RedisKeys
from stream.store.snapshots import RedisUnavailableError, SnapshotStore
from tests.support.cluster import (
    SteadyClient,
    assert_equal_to_river,
    stop_all,
    wait_learned,
)
from tests.support.pipeline import fast, publish, spawn_cli
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DATASET, LIMIT, DELAY, SEED = "synth.Agrawal", 12_000, 100, 3


@pytest.fixture
def redis_ha(tmp_path: Path) -> Iterator[RedisHA]:
    ha = RedisHA(tmp_path / "redis-ha")
    try:
        ha.up()
        yield ha
    finally:
        ha.stop()


def subscribers(port: int, channel: str) -> int:
    with redis.Redis(port=port, socket_timeout=2) as client:
        [(_name, count)] = client.pubsub_numsub(channel)
        return int(count)


def test_sentinel_failover_under_a_learner_and_an_api(
    settings: Settings, redis_ha: RedisHA, tmp_path: Path
) -> None:
    metrics_port, api_port = free_port(), free_port()
    s = fast(
        settings, redis_url=None, redis_sentinels=redis_ha.sentinels, redis_read_url="replica",
        redis_wait_replicas=1, learner_metrics_port=metrics_port, snapshot_every_labels=1_000,
        snapshot_every_seconds=0.5, redis_outage_seconds=120, serve_poll_seconds=60.0,
        # no idle release between the stretches (the documented limit of equivalence)
        watermark_idle_grace=15.0,
    )  # fmt: skip
    events = list(dataset_events(DATASET, label_delay=DELAY, limit=LIMIT, seed=SEED))
    stretches = [events[i * len(events) // 3 : (i + 1) * len(events) // 3] for i in range(3)]
    store = snapshot_store(s)  # through the Sentinels, like every process of the test
    primary, replica = redis_ha.ports["primary"], redis_ha.ports["replica"]
    channel = RedisKeys(s.redis_prefix).channel
    log, api_log = tmp_path / "learner.log", tmp_path / "api.log"
    publish(s, stretches[0])
    learner = spawn_cli(s, ["learn", "--model", "lr=logreg", "--metric", "Accuracy"], log)
    api = spawn_cli(s, ["serve", "--port", str(api_port), "--workers", "2"], api_log)
    client = SteadyClient(f"http://127.0.0.1:{api_port}/v1/models/lr/predict")
    try:
        ready = f"http://127.0.0.1:{api_port}/readyz"
        wait_until(lambda: _status(ready) == 200, 90, "the API to serve the model", log=api_log)
        # Both workers read and listen on the replica; nothing of the API is on the primary.
        wait_until(lambda: subscribers(replica, channel) >= 2, 30, "both workers to subscribe")
        assert subscribers(primary, channel) == 0
        client.start()
        publish(s, stretches[1])
        # Versions reach the API through notifications relayed by the replica (polling is off).
        wait_until(
            lambda: len(set(client.versions)) >= 3,
            60,
            "three versions served",
            log=api_log,
            detail=lambda: sorted(set(client.versions)),
        )
        mid = len(stretches[0]) // 2
        wait_learned(metrics_port, mid, 90, "learning mid-stream", log)
        before = store.latest_version("lr") or 0
        os.kill(redis_ha.processes.records()["primary"].pid, signal.SIGKILL)
        publish(s, stretches[2])  # while the Sentinels fail over
        wait_until(lambda: redis_ha.primary_port() == replica, 60, "the replica's promotion")
        wait_until(lambda: _latest(store) > before, 60, "a version after it", log=log)
        wait_learned(metrics_port, LIMIT, 120, "the whole stream", log)
        assert learner.poll() is None, log.read_text()[-3000:]
        os.kill(learner.pid, signal.SIGTERM)  # the final snapshot, then exit 0
        assert learner.wait(timeout=120) == 0, log.read_text()[-3000:]
        final = store.latest_version("lr")
        assert final is not None and final > before
        wait_until(lambda: final in client.versions[-20:], 60, "the API to serve the final version")
    finally:
        client.stop()
        stop_all([learner, api])

    assert client.statuses[200] > 0
    assert client.failures() == {}, client.statuses
    assert "Redis unreachable" in log.read_text()  # the learner did see the primary go
    assert_equal_to_river(s, DATASET, LIMIT, DELAY, SEED)


def _latest(store: SnapshotStore) -> int:
    """The newest version of ``lr``; 0 while the Sentinels name no primary: just after a
    promotion, one may already name the new primary while the others still agree on none."""
    try:
        return store.latest_version("lr") or 0
    except RedisUnavailableError:
        return 0


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return 0
