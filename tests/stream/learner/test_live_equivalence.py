"""Promise 1, live: the learner runs while the events are being published, and still equals River.

The README's condition for exact equivalence online: every partition is published in event-time
order, and no partition idles past ``RIVERSTREAM_WATERMARK_IDLE_GRACE`` while older events are
still to come. Here the learner is started first; once it is up, three threads publish the
dataset, one partition each, at uneven paces:

- partition 0 holds 4/7 of the ids and publishes them as fast as it can, then falls silent
  (its sources go idle for good: nothing older is to come from them);
- partition 1 (2/7) publishes in bursts with idle stretches of 0.7 s between them;
- partition 2 (1/7) trickles, and stops once for 0.9 s in the middle.

Every idle stretch is below the grace (3 s), so the slow partitions hold the watermark back
instead of being overtaken. A label is keyed and partitioned like its features. Once the
learner has learned every label (its snapshot metadata says so) it is stopped with SIGTERM.
Then its progressive metrics and final model equal `river.evaluate.progressive_val_score`
with the same delays exactly, for a classifier (logistic regression on Phishing, random
delays) and a regressor (linear regression on TrumpApproval, constant delay); no event was
late or forced; and several versions were written while publishing was still going on (the
learner was not handed a finished log).

Timings on the shared 2-CPU machine (load average 5-10): 24-32 s per dataset.
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import httpx
import pytest
from river import evaluate, metrics
from river.base.typing import Dataset

from learners.datasets import dataset_events, load_dataset, river_delay
from learners.specs import build_estimator
from schemas.events import EventCodec, FeatureEvent, Limits
from schemas.settings import Settings
from stream.dev.services import free_port
from stream.kafka.client import EventProducer, create_topics
from stream.learner.runtime import snapshot_store
from tests.support.pipeline import fast, final_core, final_model, spawn_cli
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GRACE = 3.0


def partition_of(event_id: str) -> int:
    """Uneven partitions: 4/7 of the ids on 0, 2/7 on 1, 1/7 on 2.

    >>> [partition_of(str(i)) for i in range(7)]
    [0, 0, 0, 0, 1, 1, 2]
    """
    rest = int(event_id) % 7
    return 0 if rest < 4 else 1 if rest < 6 else 2


def fast_then_silent(n: int) -> float:
    return 0.0


def bursts(n: int) -> float:
    """Idle 0.7 s after every 120 events."""
    return 0.7 if n % 120 == 119 else 0.0


def trickle(n: int) -> float:
    """12 ms between events, and one stop of 0.9 s at the 150th."""
    return 0.9 if n == 150 else 0.012


PACES: list[Callable[[int], float]] = [fast_then_silent, bursts, trickle]


class PartitionPublisher(threading.Thread):
    """Publishes one partition's events in time order, pausing as ``pace`` says."""

    def __init__(self, producer: EventProducer, settings: Settings, partition: int, events: list):
        super().__init__(name=f"publish-p{partition}")
        self.producer, self.settings, self.partition, self.events = (
            producer, settings, partition, events,
        )  # fmt: skip
        self.codec = EventCodec(Limits.from_settings(settings))
        self.longest_gap = 0.0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            last = time.monotonic()
            for n, event in enumerate(self.events):
                topic = (
                    self.settings.topic_features
                    if isinstance(event, FeatureEvent)
                    else self.settings.topic_labels
                )
                value = self.codec.encode(event)
                self.producer.send(topic, event.id.encode(), value, partition=self.partition)
                now = time.monotonic()
                self.longest_gap, last = max(self.longest_gap, now - last), now
                pause = PACES[self.partition](n)
                if pause:
                    time.sleep(pause)  # the pace of this partition, not synchronisation
        except BaseException as exc:  # reported by the test
            self.error = exc


def learned(settings: Settings, model: str) -> int:
    store = snapshot_store(settings)
    version = store.latest_version(model)
    return -1 if version is None else store.meta(model, version).samples_learned


def metrics_up(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


CASES = [
    ("Phishing", "logreg", ("Accuracy", "ROCAUC"), "random:0-40"),
    ("TrumpApproval", "linreg", ("MAE",), "10"),
]


@pytest.mark.parametrize(
    ("dataset", "spec", "metric_names", "delay"), CASES, ids=["classifier", "regressor"]
)
def test_learning_while_published_at_uneven_pace_equals_river(
    settings: Settings, tmp_path: Path, dataset: str, spec: str, metric_names: tuple, delay: str
) -> None:
    seed, port = 5, free_port()
    s = fast(
        settings, watermark_idle_grace=GRACE, snapshot_every_labels=100,
        snapshot_every_seconds=0.5, learner_metrics_port=port,
    )  # fmt: skip
    events = list(dataset_events(dataset, label_delay=delay, seed=seed))
    samples = sum(isinstance(e, FeatureEvent) for e in events)
    by_partition = [[e for e in events if partition_of(e.id) == p] for p in range(3)]
    assert s.kafka_bootstrap_servers
    create_topics(s.kafka_bootstrap_servers, s.topics())
    producer = EventProducer(s.kafka_bootstrap_servers, linger_ms=5)
    metric_args = [arg for name in metric_names for arg in ("--metric", name)]
    log = tmp_path / "learner.log"
    learner = spawn_cli(s, ["learn", "--model", f"m={spec}", *metric_args], log)
    try:
        wait_until(
            lambda: metrics_up(port) or learner.poll() is not None, 90, "the learner to start"
        )
        assert learner.poll() is None, log.read_text()[-3000:]
        publishers = [PartitionPublisher(producer, s, p, by_partition[p]) for p in range(3)]
        for publisher in publishers:
            publisher.start()
        for publisher in publishers:
            publisher.join(timeout=120)
        producer.flush()
        versions_while_publishing = len(snapshot_store(s).versions("m"))
        for publisher in publishers:
            assert publisher.error is None, publisher.error
            assert publisher.longest_gap < GRACE - 1, (publisher.name, publisher.longest_gap)
        wait_until(
            lambda: learned(s, "m") == samples or learner.poll() is not None,
            120,
            "every label to be learned",
        )
        assert learner.poll() is None, log.read_text()[-3000:]
        os.kill(learner.pid, signal.SIGTERM)
        assert learner.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        producer.close()
        if learner.poll() is None:
            learner.kill()
            learner.wait(timeout=10)
    assert versions_while_publishing >= 2  # it learned while the events were arriving

    counters = final_core(s).counters
    assert (counters.late_events, counters.forced_events) == (0, 0), counters

    expected = {}
    for name in metric_names:  # one River run per metric; the same final model each time
        model = build_estimator(spec)
        metric = getattr(metrics, name)()
        evaluate.progressive_val_score(
            cast(Dataset, load_dataset(dataset)), model, metric, delay=river_delay(delay, seed)
        )
        expected[name] = metric.get()
    ours = final_model(s, "m")
    assert ours.samples_learned == samples
    assert ours.metric_values() == expected
    predict = "predict_proba_one" if spec == "logreg" else "predict_one"
    for x, _ in itertools.islice(load_dataset(dataset), 0, samples, 37):
        assert getattr(ours.model, predict)(x) == getattr(model, predict)(x)
