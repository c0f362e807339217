"""A 3-broker KRaft Kafka under a running learner and producer: kill -9 one broker mid-stream.

The cluster is `stream.dev.cluster.KafkaCluster` (what `riverstream services up --cluster`
starts): replication factor 3 by the brokers' default, which riverstream's topics take, and
``min.insync.replicas`` 2. Half the stream is published and the learner starts; the other half
is published at a steady rate (acks=all, idempotent producer) while one broker is killed with
-9. Nothing the producer had acknowledged is lost and nothing is written twice (each topic
holds exactly the events published), the learner never stops, and its final model equals
River's ``progressive_val_score`` on the whole stream.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from learners.datasets import dataset_events
from schemas.settings import Settings
from stream.dev.cluster import KafkaCluster
from stream.dev.services import free_port, pid_alive
from stream.kafka.publish import Publisher, PublishReport
from tests.support.cluster import assert_equal_to_river, messages, stop_all, wait_learned
from tests.support.pipeline import fast, publish, spawn_cli
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DATASET, LIMIT, DELAY, SEED = "synth.Agrawal", 10_000, 100, 5


@pytest.fixture
def kafka_cluster(tmp_path: Path) -> Iterator[KafkaCluster]:
    base = Settings()
    cluster = KafkaCluster(tmp_path / "kafka-cluster", base.cache_dir.expanduser(),
                           base.kafka_version)  # fmt: skip
    try:
        cluster.up()
        yield cluster
    finally:
        cluster.stop(graceful=False)  # its data goes with tmp_path


def test_a_broker_killed_mid_stream_loses_nothing(
    settings: Settings, kafka_cluster: KafkaCluster, tmp_path: Path
) -> None:
    metrics_port = free_port()
    s = fast(
        settings, kafka_bootstrap_servers=kafka_cluster.bootstrap,
        learner_metrics_port=metrics_port, snapshot_every_labels=1_000,
        # no idle release while the second half comes in (the limit of equivalence)
        watermark_idle_grace=15.0,
    )  # fmt: skip
    assert s.kafka_bootstrap_servers is not None
    events = list(dataset_events(DATASET, label_delay=DELAY, limit=LIMIT, seed=SEED))
    half = len(events) // 2
    first = publish(s, events[:half])
    assert first.failed == 0 and first.sent == half
    # every partition of riverstream's topics is on the three brokers
    meta = AdminClient({"bootstrap.servers": s.kafka_bootstrap_servers}).list_topics(timeout=10)
    for topic in (s.topic_features, s.topic_labels):
        assert {len(p.replicas) for p in meta.topics[topic].partitions.values()} == {3}

    log = tmp_path / "learner.log"
    learner = spawn_cli(s, ["learn", "--model", "lr=logreg", "--metric", "Accuracy"], log)
    try:
        wait_learned(metrics_port, half // 8, 120, "the learner to start", log)
        sent = [0]
        report: list[PublishReport] = []

        def second_half() -> None:
            publisher = Publisher(s)
            try:
                progress = lambda n: sent.__setitem__(0, sent[0] + n)  # noqa: E731
                report.append(publisher.publish_events(events[half:], rate=3_000,
                                                       progress=progress))  # fmt: skip
            finally:
                publisher.close()

        producer = threading.Thread(target=second_half)
        producer.start()
        wait_until(lambda: sent[0] >= 3_000, 60, "the second half to be under way")
        victim = kafka_cluster.node(2)
        assert victim is not None
        os.kill(victim.pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(victim.pid), 10, "the broker to die")
        assert sent[0] < len(events) - half, "the broker died after the stream, not during it"
        producer.join(timeout=300)
        [second] = report
        assert second.failed == 0 and second.sent == len(events) - half, second.errors
        wait_learned(metrics_port, LIMIT, 180, "the whole stream", log)
        assert learner.poll() is None, log.read_text()[-3000:]
        os.kill(learner.pid, signal.SIGTERM)  # the final snapshot, then exit 0
        assert learner.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        stop_all([learner])

    # Nothing acknowledged was lost, nothing was written twice (idempotent retries).
    assert messages(s.kafka_bootstrap_servers, s.topic_features) == LIMIT
    assert messages(s.kafka_bootstrap_servers, s.topic_labels) == LIMIT
    assert_equal_to_river(s, DATASET, LIMIT, DELAY, SEED)
