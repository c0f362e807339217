"""Offsets of a partition revoked while a batch was read are neither kept nor committed by the
worker that read them: the partition is another member's now, whose commits they would undo.

A rebalance inside ``consume`` cannot be staged at a chosen point against a real group, so the
filter is tested as the pure function it is (`still_assigned`), and the worker's batch through
the real Kafka with its assignment changed by hand between reading and answering (what a
cooperative rebalance does to it)."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from confluent_kafka import Message, Producer, TopicPartition
from river import linear_model

from learners.predictor import ServedModel
from schemas.settings import Settings
from stream.kafka.client import create_topics
from stream.predict.answer import Answerer
from stream.predict.worker import PredictWorker, still_assigned


def test_only_the_partitions_still_assigned_keep_their_offsets() -> None:
    offsets = {("r", 0): 5, ("r", 1): 9, ("other", 0): 3}
    assert still_assigned(offsets, [("r", 0), ("other", 0), ("r", 2)]) == {
        ("r", 0): 5, ("other", 0): 3,
    }  # fmt: skip
    assert still_assigned(offsets, iter([("r", 1)])) == {("r", 1): 9}  # any iterable, once
    assert still_assigned(offsets, []) == {}
    assert still_assigned({}, [("r", 0)]) == {}
    assert offsets == {("r", 0): 5, ("r", 1): 9, ("other", 0): 3}, "left as it was"


@pytest.mark.integration
def test_a_batch_commits_only_the_partitions_the_worker_still_has(
    predict_settings: Settings,
) -> None:
    settings = predict_settings.model_copy(update={"partitions": 2})
    assert settings.kafka_bootstrap_servers
    topic = settings.topic_requests
    create_topics(settings.kafka_bootstrap_servers, settings.topics())
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers, "acks": "all"})
    for i in range(6):
        request = {"id": f"r{i}", "target": "lr", "features": {"x": i}}
        producer.produce(topic, orjson.dumps(request), f"r{i}".encode(), partition=i % 2)
    assert producer.flush(30) == 0
    model = ServedModel.build("lr", linear_model.LogisticRegression(), version=1)
    worker = PredictWorker(settings, Answerer({"lr": model}.get, is_known=lambda _: False))
    consumer = worker.consumer
    tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    try:
        consumer.assign([TopicPartition(topic, 0, 0), TopicPartition(topic, 1, 0)])
        batch: list[Message] = []
        deadline = time.monotonic() + 30
        while len(batch) < 6:
            assert time.monotonic() < deadline, f"only {len(batch)} requests read"
            batch += [m for m in consumer.consume(6, 0.2) if m.error() is None]
        consumer.incremental_unassign([tp1])  # revoked after the batch was read
        worker._answer_batch(batch)

        assert worker.stats.answered == 6, "every request of the batch is answered"
        assert worker._answered == {(topic, 0): 3}, "only the partition still assigned"
        committed: dict[int, Any] = {}
        while committed.get(0) != 3:  # the commit is asynchronous
            assert time.monotonic() < deadline, f"committed: {committed}"
            committed = {tp.partition: tp.offset for tp in consumer.committed([tp0, tp1], 10)}
        assert committed[1] < 0, "nothing committed for the revoked partition"
    finally:
        consumer.close()
