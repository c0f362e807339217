"""A Redis that refuses writes for a while is an outage to the learner's snapshots, as an
unreachable one is, and so is its final snapshot; a final snapshot refused because a model was
handed over meanwhile is written without that model.

Real servers: a learner process reads a real Kafka and writes to a private redis-server, which
refuses its writes for real (`tests.support.outage.refusing`: at ``maxmemory``, then a
read-only replica as the old primary of a failover). The learner must never exit while the
refusal lasts, report it, keep learning, snapshot again once writes are accepted, and stop with
exit 0 after a final snapshot that holds every sample.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from learners.datasets import dataset_events
from learners.serialization import load_signed
from schemas.settings import Settings
from stream.dev.services import free_port
from stream.learner.runtime import snapshot_store
from tests.support.cluster import learned
from tests.support.outage import (
    PrivateRedis,
    checkpoint_version,
    learner_gauges,
    private_redis,
    refusing,
)
from tests.support.pipeline import fast, final_core, final_model, publish, spawn_cli
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]
__all__ = ["private_redis"]  # a fixture

DELAY, SEED = 50, 3


def _gauge(learner: subprocess.Popen[bytes], port: int, name: str, value: float) -> bool:
    """Whether the learner's gauge ``name`` shows ``value``; fails at once if it exited."""
    assert learner.poll() is None, f"the learner exited with {learner.returncode}"
    return learner_gauges(port).get(name) == value


def _rides_out(learner: subprocess.Popen[bytes], port: int, samples: int, log: Path) -> None:
    """The learner reports an outage, and learns on to ``samples`` samples, without exiting."""
    up = "riverstream_redis_up"
    wait_until(lambda: _gauge(learner, port, up, 0), 60, "the learner to report it", log=log)
    wait_until(
        lambda: learned(port) >= samples,
        60,
        "learning to go on while writes are refused",
        log=log,
    )
    assert learner.poll() is None, log.read_text()[-3000:]


def test_the_learner_rides_out_redis_refusing_writes(
    settings: Settings, private_redis: PrivateRedis, tmp_path: Path
) -> None:
    """OOM, then READONLY while events arrive; the stop comes during the second refusal."""
    port, n = free_port(), 1_500
    s = fast(
        settings, redis_url=private_redis.url, learner_metrics_port=port,
        snapshot_every_labels=100, snapshot_every_seconds=0.5, redis_outage_seconds=120,
    )  # fmt: skip
    events = list(dataset_events("synth.Agrawal", label_delay=DELAY, limit=n, seed=SEED))
    stretches = [events[i * len(events) // 3 : (i + 1) * len(events) // 3] for i in range(3)]
    store, log = snapshot_store(s), tmp_path / "learner.log"
    publish(s, stretches[0])
    learner = spawn_cli(s, ["learn", "--model", "lr=logreg", "--metric", "Accuracy"], log)
    try:
        wait_until(lambda: checkpoint_version(store), 60, "the first snapshot", log=log)
        with refusing(private_redis, "OOM"):  # in force once the block starts
            before = checkpoint_version(store)  # (a version may land just before)
            publish(s, stretches[1])  # labels to snapshot while writes are refused
            _rides_out(learner, port, n * 2 // 3 - 2 * DELAY, log)
            assert checkpoint_version(store) == before  # nothing written meanwhile
            assert "Redis is back" not in log.read_text()  # reads answered, writes did not
        wait_until(lambda: checkpoint_version(store) > before, 60, "a snapshot after it", log=log)
        # The version is visible at the write's EXEC; the learner sees Redis back once the
        # snapshot's registry steps after it succeeded too (a refusal starting in between
        # fails them, and the outage goes on): wait for that before refusing again.
        wait_until(lambda: "Redis is back" in log.read_text(), 60, "Redis seen back", log=log)
        with refusing(private_redis, "READONLY"):
            before = checkpoint_version(store)
            publish(s, stretches[2])
            _rides_out(learner, port, n, log)
            assert checkpoint_version(store) == before
            assert log.read_text().count("Redis is back") == 1  # after the OOM only
            os.kill(learner.pid, signal.SIGTERM)  # its final snapshot waits for Redis
            stopped = time.monotonic()
            wait_until(lambda: time.monotonic() - stopped >= 2, 5, "two seconds of stopping")
            assert learner.poll() is None, log.read_text()[-3000:]
        assert learner.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if learner.poll() is None:
            learner.kill()
            learner.wait(timeout=10)
    text = log.read_text()
    assert "refusing writes" in text and "Redis is back after an outage of" in text
    assert "maxmemory" in text and "read only replica" in text  # each refusal, named
    # Nothing lost: the final snapshot holds every sample of the stream, each once.
    assert final_model(s, "lr").samples_learned == n
    assert final_core(s).counters.labels_joined == n


def test_a_final_snapshot_leaves_out_a_model_handed_over_meanwhile(
    settings: Settings, private_redis: PrivateRedis, tmp_path: Path
) -> None:
    """Stopped during an outage, a learner retries its final snapshot until Redis is back; by
    then another learner owns one of its models (it could not read its commands meanwhile).
    It used to retry that snapshot forever, without pause; now it leaves the model out (as
    the model's release command would), writes the others, and exits 0."""
    port, n = free_port(), 500
    s = fast(settings, redis_url=private_redis.url, learner_metrics_port=port,
             redis_outage_seconds=120)  # fmt: skip
    store, log = snapshot_store(s), tmp_path / "learner.log"
    publish(s, list(dataset_events("synth.Agrawal", label_delay=DELAY, limit=n, seed=SEED)))
    argv = ["learn", "--model", "lr=logreg", "--model", "lr2=logreg", "--metric", "Accuracy"]
    learner = spawn_cli(s, argv, log)
    try:
        wait_until(
            lambda: learned(port) >= n,
            60,
            "the stream to be learned",
            log=log,
        )
        wait_until(lambda: store.latest_version("lr2"), 30, "a snapshot of lr2", log=log)
        before = store.latest_version("lr2")
        store.client.set(store.keys.owner("lr2"), "other")  # another learner's now
        private_redis.kill(signal.SIGKILL)
        os.kill(learner.pid, signal.SIGTERM)  # its final snapshot waits for Redis
        wait_until(lambda: "Redis unreachable" in log.read_text(), 30, "the outage", log=log)
        private_redis.start()  # same port, same data directory
        assert learner.wait(timeout=30) == 0, log.read_text()[-3000:]
    finally:
        if learner.poll() is None:
            learner.kill()
            learner.wait(timeout=10)
    text = log.read_text()
    assert "model lr2 is owned by learner 'other' now" in text
    assert store.latest_version("lr2") == before  # never written by this learner again
    assert (store.latest_version("lr") or 0) > (before or 0)
    checkpoint = store.latest_checkpoint()
    assert checkpoint is not None
    assert load_signed(checkpoint[1], s.require_snapshot_key())["models"] == ["lr"]


def test_reads_that_answer_do_not_end_an_outage_of_refused_writes(
    settings: Settings, private_redis: PrivateRedis, tmp_path: Path
) -> None:
    """Versions are rare here, so the outage begins with a refused live update. Redis refusing
    writes still answers reads, such as the learner's command checks: the outage must go on
    (reported, its budget running) until a write succeeds. It used to end at the first command
    check ("Redis is back after an outage of 0.2 s"), begin again at the next live update, and
    so on, its budget starting over each time."""
    port = free_port()
    s = fast(
        settings, redis_url=private_redis.url, learner_metrics_port=port,
        snapshot_every_labels=1_000_000, snapshot_every_seconds=3600, redis_outage_seconds=120,
    )  # fmt: skip
    events = list(dataset_events("synth.Agrawal", label_delay=DELAY, limit=1500, seed=SEED))
    half = len(events) // 2
    store, log = snapshot_store(s), tmp_path / "learner.log"
    publish(s, events[:half])
    learner = spawn_cli(s, ["learn", "--model", "lr=logreg"], log)
    try:
        wait_until(lambda: store.latest_version("lr"), 60, "the first version", log=log)
        with refusing(private_redis, "OOM"):
            publish(s, events[half:])  # learned on: its live updates are refused
            wait_until(lambda: "refusing writes" in log.read_text(), 30, "the outage", log=log)
            began = time.monotonic()
            wait_until(lambda: time.monotonic() - began >= 3, 5, "three seconds of refusals")
            assert "Redis is back" not in log.read_text(), log.read_text()[-3000:]
            assert _gauge(learner, port, "riverstream_redis_up", 0)
        wait_until(lambda: "Redis is back" in log.read_text(), 30, "the outage's end", log=log)
        assert learner.poll() is None, log.read_text()[-3000:]
    finally:
        if learner.poll() is None:
            learner.kill()
            learner.wait(timeout=10)
