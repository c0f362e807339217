"""The worker's producer keeps the errors of its newest failed deliveries, what a batch
answered again reports (`PredictWorker._retry`): at most `AnswerProducer.errors`' 20, the
oldest going first, and counts every failure once (`take_failures`)."""

from __future__ import annotations

from typing import Any, cast

import pytest
from confluent_kafka import KafkaError, KafkaException, Message
from confluent_kafka.admin import AdminClient, NewTopic

from schemas.errors import KafkaAdapterError
from schemas.settings import Settings
from stream.predict.producer import AnswerProducer

pytestmark = pytest.mark.integration  # a producer needs a broker to talk to


@pytest.fixture
def producer(settings: Settings) -> AnswerProducer:
    assert settings.kafka_bootstrap_servers
    return AnswerProducer(settings.kafka_bootstrap_servers)


def failure(i: int) -> KafkaError:
    return KafkaError(KafkaError._MSG_TIMED_OUT, f"delivery {i} timed out")


def test_the_newest_twenty_errors_are_kept_and_every_failure_counted(
    producer: AnswerProducer,
) -> None:
    message = cast(Message, None)  # not read by the callback
    for i in range(25):
        producer._delivered(failure(i), message)
        producer._delivered(None, message)  # a delivery that succeeded: neither
    assert list(producer.errors) == [str(failure(i)) for i in range(5, 25)]
    assert list(producer.errors)[-3:] == [str(failure(i)) for i in (22, 23, 24)]  # a retry's
    assert producer.take_failures() == 25
    assert producer.take_failures() == 0, "counted once"
    assert len(producer.errors) == 20, "kept for the next report"
    producer._delivered(failure(25), message)
    assert producer.errors[0] == str(failure(6)) and producer.errors[-1] == str(failure(25))
    assert producer.take_failures() == 1


def test_deliveries_the_broker_refuses_are_counted_with_their_error(
    settings: Settings, producer: AnswerProducer
) -> None:
    """Through the real broker: a topic that takes messages of 1000 bytes at most refuses
    each of 25 larger ones for good (not retried)."""
    assert settings.kafka_bootstrap_servers
    topic = f"{settings.topic_predictions}.small"
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    created = admin.create_topics(
        [NewTopic(topic, 1, 1, config={"max.message.bytes": "1000"})]
    )  # fmt: skip
    created[topic].result(30)
    for i in range(25):
        producer.send(topic, f"k{i}".encode(), b"v" * 2000)
    assert producer.unacknowledged(60) == 0
    assert producer.take_failures() == 25
    errors: list[Any] = list(producer.errors)
    assert len(errors) == 20 and all("MSG_SIZE_TOO_LARGE" in e for e in errors), errors[:1]


class _Refusing:
    """librdkafka's producer refusing every message at once with ``error`` (what it does, once
    it knows from a topic's metadata that the ACLs deny the write)."""

    def __init__(self, error: KafkaError) -> None:
        self.error = error
        self.asked: list[str] = []

    def produce(self, *args: Any, **kwargs: Any) -> None:
        raise KafkaException(self.error)

    def list_topics(self, topic: str, timeout: float) -> None:
        self.asked.append(topic)


def test_a_write_refused_at_once_by_the_acls_is_a_failed_delivery_not_a_stop(
    producer: AnswerProducer,
) -> None:
    """The worker answers such a batch again (as for a denied delivery), asking for the topic's
    metadata again each time (`recheck`), until the ACLs allow the write; before, ``send``
    raised and the worker stopped (a CI run of test_worker_acl.py). Any other refusal at once
    still raises."""
    topic = "riverstream.predictions"
    refused = KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "Topic authorization failed")
    producer._producer = cast(Any, refusing := _Refusing(refused))
    producer.send(topic, b"k", b"v")
    producer.send(topic, b"k", b"v")
    assert producer.denied is not None and producer.denied.resource == f"topic {topic}"
    assert list(producer.errors) == [str(refused)] * 2
    assert producer.take_failures() == 2 and producer.denied is None
    producer.recheck()  # its metadata asked again (librdkafka would refuse it for 5 minutes)
    producer.recheck()
    assert refusing.asked == [topic]
    producer._producer = cast(Any, _Refusing(KafkaError(KafkaError._UNKNOWN_PARTITION)))
    with pytest.raises(KafkaAdapterError, match=f"produce to {topic} failed"):
        producer.send(topic, b"k", b"v")
