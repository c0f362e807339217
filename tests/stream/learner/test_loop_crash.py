"""Promise 2: kill -9 the learner at random moments; the final state equals an uninterrupted run."""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import time
from pathlib import Path

from learners.datasets import dataset_events, load_dataset
from learners.specs import ModelSpec
from schemas.settings import Settings
from stream.learner.runtime import snapshot_store
from tests.support.cluster import stop_all
from tests.support.pipeline import fast, final_model, learn, publish, replay, spawn_cli


def _spawn_learner(settings: Settings, log: Path, *, until_idle: bool) -> subprocess.Popen[bytes]:
    idle = ["--exit-when-idle", "1"] if until_idle else []
    args = ["learn", "--model", "lr=logreg", "--metric", "Accuracy", "--metric", "ROCAUC"]
    return spawn_cli(settings, [*args, *idle], log)


def test_kill_9_three_times_changes_nothing(settings: Settings, tmp_path: Path) -> None:
    limit = 15_000
    crashed = fast(
        settings,
        snapshot_every_labels=250,
        snapshot_every_seconds=0.05,
        consumer_batch=150,
        snapshot_fork_min_bytes=0,  # every snapshot forked: kills land in children too
    )
    events = list(dataset_events("synth.Agrawal", label_delay=100, limit=limit, seed=7))
    # The stream arrives in four stretches (in event-time order); the learner is killed with
    # -9 during the first and the third, stopped with SIGTERM during the second, each at a
    # random moment after a random number of snapshots.
    stretches = [events[i * len(events) // 4 : (i + 1) * len(events) // 4] for i in range(4)]
    store = snapshot_store(crashed)
    rng = random.Random(42)
    log = tmp_path / "learner.log"
    started: list[subprocess.Popen[bytes]] = []
    try:
        for interruption, stretch in enumerate(stretches[:3]):
            publish(crashed, stretch)
            proc = _spawn_learner(crashed, log, until_idle=False)
            started.append(proc)
            start_version = store.latest_checkpoint()
            # After one or two more snapshots: a stretch is sure to give two (one on the way,
            # one when the inputs turn idle), not more. The learner goes on learning while a
            # snapshot is forked and written, so on a loaded machine it may write only those
            # two (up to four were asked: a CI run under three test workers waited for a v4
            # that never came).
            target = (start_version[0] if start_version else 0) + rng.randint(1, 2)
            deadline = time.monotonic() + 120
            while proc.poll() is None:
                latest = store.latest_checkpoint()
                if latest and latest[0] >= target:
                    break
                assert time.monotonic() < deadline, (
                    f"no snapshot v{target}:\n{log.read_text()[-3000:]}"
                )
                time.sleep(0.005)  # polling Redis with a deadline
            assert proc.poll() is None, (
                f"learner ended before being killed:\n{log.read_text()[-3000:]}"
            )
            time.sleep(rng.random() * 0.05)  # a random moment between two snapshots
            if interruption == 1:  # a graceful stop: final snapshot of what was processed, exit 0
                os.kill(proc.pid, signal.SIGTERM)
                assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
            else:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        publish(crashed, stretches[3])
        proc = _spawn_learner(crashed, log, until_idle=True)
        started.append(proc)
        assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        stop_all(started)  # what still runs when an assertion failed
    assert log.read_text().count("resumed from snapshot") == 3

    # The same stream, learned without interruption, under another prefix and topics.
    clean = fast(
        settings,
        redis_prefix=settings.redis_prefix + "-clean",
        topic_features=settings.topic_features + "-clean",
        topic_labels=settings.topic_labels + "-clean",
    )
    replay(clean, "synth.Agrawal", 100, limit=limit, seed=7)
    [expected] = learn(clean, [ModelSpec("lr", "logreg", ("Accuracy", "ROCAUC"))])

    ours, theirs = final_model(crashed, "lr"), final_model(clean, "lr")
    assert ours.samples_learned == theirs.samples_learned == limit
    assert ours.metric_values() == expected["metrics"]
    for x, _ in itertools.islice(load_dataset("synth.Agrawal", seed=7), 0, limit, 997):
        assert ours.model.predict_proba_one(x) == theirs.model.predict_proba_one(x)
